"""The benchmark's machinery (bench/), run small so that it cannot rot.

bench/throughput.py at N=300 fills three queues, drains one with the worker, one
with the messaging limit (bench/limit.py) and one with the naive reference
(bench/naive.py), checks them against the stream, and cleans up after itself;
at N=120 it runs two rounds (--repeat 2) with the worker of HEAD as a --compare
revision too. The figures at such N mean nothing (process start dominates); the
lines and the checks are what is asserted.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pika.exceptions
import psycopg
import pytest

from conftest import ADMIN_DSN, RABBITMQ, amqp_connection

THROUGHPUT = Path(__file__).resolve().parent.parent / "bench" / "throughput.py"
N = 300
# A process's CPU per message; RabbitMQ's and PostgreSQL's are n/a where their
# processes cannot be found (another machine, or /proc entries we may not read).
CPU = r"cpu µs/msg: {label} \d+, rabbitmq (\d+|n/a), postgres (\d+|n/a), total \d+"
CPU_LINE = rf"cpu: +{{label}}: {CPU}(; postgres backends of its database (\d+|n/a))?; machine busy [\d.]+ of \d+ cores over [\d.]+ s; load [\d.]+ -> [\d.]+"

EXPECTED_LINES = [
    r"load: +start: load average [\d.]+ [\d.]+ [\d.]+ on \d+ CPUs",
    rf"stream: +{N} messages, {N // 2} creates \+ {N // 2} updates, modes email/email_profile/custom .*",
    r"cpu: +measured from /proc: rabbitmq: .*; postgres: .*",
    rf"fill: +{3 * N} msgs in [\d.]+ s = \d+ msg/s .*worker queue {N}, limit queue {N}, naive queue {N}\)",
    rf"worker: +{N} msgs in [\d.]+ s = \d+ msg/s, peak RSS \d+ MB \(prefetch \d+, batch \d+\)",
    r"slices: +worker msg/s per 10% of the results, first result on:( \S+){10} "
    r"\(overall \d+ msg/s after a [\d.]+ s start\)",
    CPU_LINE.format(label="worker"),
    rf"limit: +{N} msgs in [\d.]+ s = \d+ msg/s, peak RSS \d+ MB \(no-op worker on dbimport.broker, .*\)",
    CPU_LINE.format(label="limit"),
    rf"naive: +{N} msgs in [\d.]+ s = \d+ msg/s, peak RSS \d+ MB",
    CPU_LINE.format(label="naive"),
    rf"check: +worker: {N}/{N} correct results \({N} received\), {N // 2}/{N // 2} profiles as the stream "
    rf"implies, events {N // 2} created \+ {N // 2} updated: OK",
    rf"check: +limit: {N} results for {N} messages \(counted: the limit writes no profiles\): OK",
    rf"check: +naive: {N}/{N} correct results \({N} received\), {N // 2}/{N // 2} profiles as the stream "
    rf"implies, events {N // 2} created \+ {N // 2} updated: OK",
    r"check: +worker and naive stores hold the same profiles .*: OK",
    r"ratio: +worker / naive [\d.]+x \(target >= 6x: (PASS|FAIL)\), worker / limit [\d.]+x; "
    r"RSS target <= 150 MB: (PASS|FAIL)",
    r"load: +end: .*",
]


def run_benchmark(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(THROUGHPUT), "--admin-dsn", ADMIN_DSN, "--amqp-host", RABBITMQ["host"],
         "--amqp-port", str(RABBITMQ["port"]), *args],
        capture_output=True, text=True, timeout=240,
    )


def queue_exists(name: str) -> bool:
    connection = amqp_connection()
    try:
        connection.channel().queue_declare(name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


@pytest.mark.slow
def test_given_300_messages_when_the_benchmark_runs_then_both_workers_answer_every_message_correctly(
    services: None,
) -> None:
    """Given a stream of 300 messages (creates and updates over three modes),
    when bench/throughput.py drains it with the worker and with the naive reference,
    then it prints every figure line, both drains answered all 300 messages
    correctly and left the profiles the stream implies, and nothing is left behind."""
    done = run_benchmark("--messages", str(N), "--json")

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    report: dict[str, Any] = orjson.loads(lines[-1])
    text_lines = lines[:-1]
    for pattern in EXPECTED_LINES:
        assert any(re.fullmatch(pattern, line) for line in text_lines), (pattern, done.stdout)

    for label in ("worker", "naive"):
        drained = report[label]
        assert drained["messages"] == N and drained["complete"] and drained["exit_code"] == 0
        assert drained["check"] == {
            "correct_results": N, "results": N, "profiles": N // 2,
            "events": {"profile_created": N // 2, "profile_updated": N // 2}, "ok": True,
        }
        assert drained["rate"] > 0 and drained["peak_rss_mb"] > 10
        assert len(drained["slice_rates"]) == 10
    limit = report["limit"]
    assert limit["messages"] == N and limit["complete"] and limit["check"] == {"results": N, "ok": True}
    for label in ("worker", "limit", "naive"):
        assert report[label]["cpu"]["us_per_msg"]["drain"] > 0
    assert set(report["ratios"]) == {"worker / naive", "worker / limit"}
    assert report["ok"] is True
    assert_nothing_left(report)


@pytest.mark.slow
def test_given_two_rounds_and_a_compare_revision_then_each_kind_drains_twice_and_medians_are_printed(
    services: None,
) -> None:
    """Given a stream of 120 messages by e-mail,
    when bench/throughput.py runs two rounds with HEAD's worker as a --compare revision,
    then every round fills fresh queues and drains worker, HEAD, limit and naive (the
    second round in the reverse order), every drain is correct, the summary gives each
    kind's median and spread and the ratios of the medians, and nothing is left behind."""
    n = 120
    done = run_benchmark("--messages", str(n), "--modes", "email", "--repeat", "2", "--compare", "HEAD", "--json")

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    report: dict[str, Any] = orjson.loads(lines[-1])
    text = lines[:-1]
    for pattern in [
        r"compare: +HEAD = [0-9a-f]{12}: .*checked.*",
        r"round: +1 of 2: worker, HEAD, limit, naive",
        r"round: +2 of 2: naive, limit, HEAD, worker",
        rf"check: +HEAD: {n}/{n} correct results .*: OK",
        r"check: +worker and HEAD stores hold the same profiles .*: OK",
        *(rf"median: +{kind}: \d+ msg/s, spread \d+-\d+ over 2 rounds; {CPU.format(label=kind)}"
          for kind in ("worker", "HEAD", "limit", "naive")),
        r"ratio: +worker / naive [\d.]+x \(target >= 6x: (PASS|FAIL)\), worker / HEAD [\d.]+x, "
        r"worker / limit [\d.]+x \(medians of 2 rounds\); RSS target <= 150 MB: (PASS|FAIL)",
    ]:
        assert any(re.fullmatch(pattern, line) for line in text), (pattern, done.stdout)
    assert sum(line.startswith("fill:") for line in text) == 2
    assert len(report["rounds"]) == 2
    for kind in ("worker", "HEAD", "limit", "naive"):
        assert len(report[kind]["rates"]) == 2 and report[kind]["check"]["ok"], report[kind]
        assert all(r[kind]["complete"] and r[kind]["check"]["ok"] for r in report["rounds"])
    assert report["compare"][0]["rev"] == "HEAD"
    assert report["ok"] is True
    assert_nothing_left(report)


def assert_nothing_left(report: dict[str, Any]) -> None:
    with psycopg.connect(ADMIN_DSN) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (report["databases"],)
        ).fetchall()
    assert left == []
    assert [q for q in report["queues"] if queue_exists(q)] == []
