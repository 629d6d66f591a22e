"""Message streams for fault tests, and the one check every fault must pass.

After any fault and a full drain:
1. every message has a result, and several results for one message agree;
2. exactly one profile per match value (and no other profile);
3. no outage was turned into an error result (every result is error 0);
and, since nothing is applied twice (docs/contract.md, "Redelivery and idempotency"):
each message recorded exactly one profile event (created or updated), and each profile
exactly one `profile_created`.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conftest import Harness, msg

Message = dict[str, Any]
# What identifies the profile a message must end up in: (mode, canonical match value).
Identity = Callable[[Message], tuple[str, str]]


def email_stream(tag: str, *, count: int = 3000, emails: int = 300, matching: str | None = None) -> list[Message]:
    """`count` valid messages over `emails` addresses, each with its own feedback_id and data."""
    extra = {} if matching is None else {"matching": matching}
    return [
        msg(email=f"{tag}-{i % emails}@example.com", feedback_id=f"{tag}-{i}", data={"_fname": f"n{i}"}, **extra)
        for i in range(count)
    ]


def by_email(message: Message) -> tuple[str, str]:
    return "email", message["email"].strip().lower()


@dataclass
class Drain:
    """What a drained stream got: its results by feedback_id, the feedback_ids answered
    more than once, and the number of profile events recorded."""

    results: dict[str, list[Message]]
    duplicated: set[str]
    events: int


def assert_nothing_lost_nothing_twice(
    harness: Harness, messages: list[Message], results: list[Message], *, identity: Identity = by_email,
) -> Drain:
    """The fault suite's three assertions, plus "applied once", on a drained stream."""
    sent = {m["feedback_id"]: m for m in messages}
    assert len(sent) == len(messages), "the stream's feedback_ids must be unique"
    answered: dict[str, list[Message]] = defaultdict(list)
    for result in results:
        answered[result["feedback_id"]].append(result)

    # 1. Every message has a result; several results for one message agree.
    missing = sorted(set(sent) - set(answered))
    assert missing == [], f"{len(missing)} messages have no result, e.g. {missing[:5]}"
    assert sorted(set(answered) - set(sent)) == [], "results for messages never sent"
    disagreeing = {fid: rs for fid, rs in answered.items() if any(r != rs[0] for r in rs)}
    assert disagreeing == {}, f"results of one message disagree: {list(disagreeing.items())[:3]}"

    # 3. No outage turned into an error result.
    errors = [rs[0] for rs in answered.values() if rs[0]["error"] != 0]
    assert errors == [], f"{len(errors)} error results, e.g. {errors[:3]}"

    # 2. Exactly one profile per match value, and no other profile.
    profiles_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for fid, message in sent.items():
        profiles_of[identity(message)].add(answered[fid][0]["profile_id"])
    split = {value: ids for value, ids in profiles_of.items() if len(ids) != 1}
    assert split == {}, f"match values answered with several profiles: {list(split.items())[:3]}"
    answered_profiles = {ids.pop() for ids in profiles_of.values()}
    assert len(answered_profiles) == len(profiles_of), "two match values share one profile"
    stored = {pid for (pid,) in harness.rows("SELECT profile_id FROM profiles")}
    assert stored == answered_profiles, (
        f"{len(stored)} profiles stored for {len(profiles_of)} match values; "
        f"not answered: {sorted(stored - answered_profiles)[:5]}"
    )

    # Applied once: one profile event per message, one profile_created per profile.
    per_message = Counter(dict(harness.rows(
        "SELECT feedback_id, count(*) FROM events WHERE kind IN ('profile_created', 'profile_updated') "
        "GROUP BY feedback_id"
    )))
    twice = {fid: n for fid, n in per_message.items() if n != 1}
    assert twice == {}, f"messages applied more than once: {list(twice.items())[:5]}"
    assert set(per_message) == set(sent), "messages answered 0 but never applied"
    created = Counter(dict(harness.rows(
        "SELECT profile_id, count(*) FROM events WHERE kind = 'profile_created' GROUP BY profile_id"
    )))
    assert created == Counter(dict.fromkeys(answered_profiles, 1)), "a profile created twice, or never"

    assert harness.queue_depth(harness.settings.import_queue) == 0
    duplicated = {fid for fid, rs in answered.items() if len(rs) > 1}
    return Drain(dict(answered), duplicated, sum(per_message.values()))


# --- every mode that creates ---------------------------------------------------------------


def _email(prefix: str, v: int, c: int) -> str:
    """The same address written another way on every copy: case and surrounding spaces."""
    address = f"{prefix}-{v}@example.com"
    return [address, f" {address.upper()} ", address.capitalize()][c % 3]


def _phone(mode_index: int, v: int, c: int) -> str:
    """The same phone written another way on every copy."""
    digits = f"79{mode_index}{v:04d}000"
    return [f"+{digits}", f"+{digits[0]} ({digits[1:4]}) {digits[4:7]}-{digits[7:]}", digits][c % 3]


# Match keys of copy c of value v, for each mode that creates a profile for its value.
# custom_sub is not among them: a profile it creates does not hold its match value (no
# subscription address to write it to), so copies rightly create several profiles.
CREATING_MODES: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "email": lambda v, c: {"email": _email("m-email", v, c)},
    "email_profile": lambda v, c: {"email": _email("m-email-profile", v, c)},
    "email_sub": lambda v, c: {"email": _email("m-email-sub", v, c), "resource_id": 24},
    "phone": lambda v, c: {"phone": _phone(1, v, c)},
    "phone_sub": lambda v, c: {"phone": _phone(2, v, c), "resource_id": 24},
    "push_sub": lambda v, c: {"provider": "android-firebase", "subscription_id": f"m-push-{v}", "resource_id": 24},
    "custom": lambda v, c: {"field_name": "CRM_ID", "field_value": 500000 + v if c % 2 else str(500000 + v)},
    "email_phone": lambda v, c: {"email": _email("m-email-phone", v, c), "phone": _phone(3, v, c)},
    "email_phone_sub": lambda v, c: {"email": _email("m-email-phone-sub", v, c), "phone": _phone(4, v, c),
                                     "resource_id": 24},
}


def modes_stream(tag: str, *, values: int, copies: int, seed: int = 5) -> list[Message]:
    """Every copy of every value of every creating mode, shuffled so that copies of one
    value meet in different batches and different workers."""
    messages = [
        msg(matching=mode, **keys(v, c), feedback_id=f"{tag}:{mode}:{v}:{c}", data={"_lname": f"copy {c}"})
        for mode, keys in CREATING_MODES.items()
        for v in range(values)
        for c in range(copies)
    ]
    random.Random(seed).shuffle(messages)
    return messages


def by_mode_value(message: Message) -> tuple[str, str]:
    _tag, mode, value, _copy = message["feedback_id"].split(":")
    return mode, value
