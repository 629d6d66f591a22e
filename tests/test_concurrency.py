"""Identity under concurrency: four worker processes never create two profiles for one value.

The promise of docs/scaling.md, "Competing consumers".
"""
from __future__ import annotations

import random
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Harness, msg, worker_env
from dbimport.config import Settings

WORKERS = 4
VALUES_PER_MODE = 40
COPIES_PER_VALUE = 10
WORKERS_TIMEOUT_S = 120


def email_variant(address: str, copy: int) -> str:
    """The same address written another way: case and surrounding spaces."""
    local, domain = address.split("@")
    return [address, f" {address.upper()} ", f"{local.capitalize()}@{domain.upper()}", f"\t{address}"][copy % 4]


def phone_variant(digits: str, copy: int) -> str:
    """The same phone written another way: separators, with or without its +."""
    d = digits.lstrip("+")
    return [f"+{d}", f"+{d[0]} ({d[1:4]}) {d[4:7]}-{d[7:9]}-{d[9:]}", f"{d[0]}.{d[1:4]}.{d[4:]}",
            f"+{d[:4]} {d[4:]}"][copy % 4]


def phone_of(mode_index: int, value: int) -> str:
    return f"+79{mode_index}{value:04d}000"


# For each mode that creates: the match keys of one copy of one value. Each mode has
# values of its own. custom_sub is left out: a profile it creates does not hold its
# value (there is no subscription address to write it to), so repeated messages
# rightly create several profiles; profile_id never creates.
Keys = Callable[[int, int], dict[str, Any]]
CREATING_MODES: dict[str, Keys] = {
    "email": lambda v, c: {"email": email_variant(f"email-{v}@example.com", c)},
    "email_profile": lambda v, c: {"email": email_variant(f"email-profile-{v}@example.com", c)},
    "email_sub": lambda v, c: {"email": email_variant(f"email-sub-{v}@example.com", c), "resource_id": 24},
    "phone": lambda v, c: {"phone": phone_variant(phone_of(1, v), c)},
    "phone_sub": lambda v, c: {"phone": phone_variant(phone_of(2, v), c), "resource_id": 24},
    "push_sub": lambda v, c: {"provider": "android-firebase", "subscription_id": f"push-{v}", "resource_id": 24},
    "custom": lambda v, c: {"field_name": "CRM_ID", "field_value": 100000 + v if c % 2 else str(100000 + v)},
    "email_phone": lambda v, c: {"email": email_variant(f"email-phone-{v}@example.com", c),
                                 "phone": phone_variant(phone_of(3, v), c)},
    "email_phone_sub": lambda v, c: {"email": email_variant(f"email-phone-sub-{v}@example.com", c),
                                     "phone": phone_variant(phone_of(4, v), c), "resource_id": 24},
}
# Subscriptions a profile of each mode ends up with: one per subscribed match value.
SUBSCRIPTIONS_PER_PROFILE = {"email_sub": 1, "phone_sub": 1, "push_sub": 1, "email_phone_sub": 2}


def stream() -> list[dict[str, Any]]:
    """Every copy of every value of every mode, shuffled so that copies meet across workers."""
    messages = [
        msg(matching=mode, **keys(v, c), feedback_id=f"{mode}:{v}:{c}", data={"_fname": mode, "_lname": str(c)})
        for mode, keys in CREATING_MODES.items()
        for v in range(VALUES_PER_MODE)
        for c in range(COPIES_PER_VALUE)
    ]
    random.Random(4).shuffle(messages)
    return messages


def run_workers(settings: Settings, cwd: Path, count: int) -> None:
    """Start `count` worker processes together on one queue; wait for all to drain it."""
    # Small batches and prefetch, so that the workers interleave on every value.
    env = worker_env(settings, IMPORT_BATCH_SIZE="20", IMPORT_PREFETCH="40", IMPORT_BATCH_WAIT_MS="20")
    command = [sys.executable, "-m", "dbimport", "run", "--until-empty"]
    processes = [
        subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(count)
    ]
    try:
        outputs = [p.communicate(timeout=WORKERS_TIMEOUT_S) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = [(p.returncode, err.decode()[-2000:]) for p, (_out, err) in zip(processes, outputs) if p.returncode]
    assert failed == [], failed


@pytest.mark.slow
def test_four_workers_on_one_queue_create_exactly_one_profile_per_match_value(
    harness: Harness, tmp_path: Path,
) -> None:
    """Given a shuffled stream of every creating mode, each value sent many times and
    written in different ways, when four worker processes drain it together, then
    every message gets exactly one result with error 0, all copies of one value name
    the same profile, and each value has exactly one profile in the database.

    custom_sub is not among the modes: a profile it creates does not hold its match
    value, so it cannot find it again; profile_id never creates."""
    messages = stream()
    harness.publish(*messages)

    run_workers(harness.settings, tmp_path, WORKERS)
    results = harness.results()

    # Each process logs what it handled when it stops: all four took part.
    handled = [int(n) for n in re.findall(r"stopped: handled=(\d+)", Path(harness.settings.log_path).read_text())]
    assert len(handled) == WORKERS and min(handled) > 0 and sum(handled) == len(messages), handled

    assert Counter(r["feedback_id"] for r in results) == Counter(m["feedback_id"] for m in messages)
    assert [r for r in results if r["error"] != 0] == []
    profiles_of_value: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in results:
        mode, value, _copy = r["feedback_id"].split(":")
        profiles_of_value[mode, value].add(r["profile_id"])
    assert {key: ids for key, ids in profiles_of_value.items() if len(ids) != 1} == {}
    distinct = Counter(mode for mode, _value in profiles_of_value)
    assert distinct == dict.fromkeys(CREATING_MODES, VALUES_PER_MODE)
    assert len({ids.pop() for ids in profiles_of_value.values()}) == len(CREATING_MODES) * VALUES_PER_MODE

    assert dict(harness.rows("SELECT fields->>'_fname', count(*) FROM profiles GROUP BY 1")) == dict.fromkeys(CREATING_MODES, VALUES_PER_MODE)
    assert dict(harness.rows(
        "SELECT p.fields->>'_fname', count(*) FROM subscriptions s "
        "JOIN profiles p USING (db_id, profile_id) GROUP BY 1"
    )) == {mode: n * VALUES_PER_MODE for mode, n in SUBSCRIPTIONS_PER_PROFILE.items()}
    assert harness.queue_depth(harness.settings.import_queue) == 0
