"""The prefetch × batch sweep: the worker's msg/s and peak RSS over a grid of
IMPORT_PREFETCH and IMPORT_BATCH_SIZE, to choose their defaults.

Each cell drains its own queue of the same N-message stream as bench/throughput.py
into its own fresh database (copied from one made by `dbimport-worker init-db`),
and is checked the same way (one correct result per message, the profiles the
stream implies). Cells with batch > prefetch are skipped: the worker refuses them.

    .venv/bin/python bench/sweep.py                                   # 5 x 5 grid, N = 20,000
    .venv/bin/python bench/sweep.py --messages 10000 --prefetch 500,1000,2000 --batch 250,500,1000
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from throughput import (
    DEFAULT_SEED,
    Model,
    Services,
    Target,
    add_modes_option,
    add_service_options,
    clone_database,
    delete_queues,
    drain_worker,
    drop_database,
    fill,
    init_database,
    load_line,
    positive,
    say,
    verify,
)

DEFAULT_MESSAGES = 20_000
DEFAULT_PREFETCH = (250, 500, 1000, 2000, 4000)
DEFAULT_BATCH = (100, 250, 500, 1000, 2000)


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, e.g. 250,500,1000") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Sweep IMPORT_PREFETCH x IMPORT_BATCH_SIZE: msg/s and peak RSS.")
    parser.add_argument("--messages", type=positive, default=DEFAULT_MESSAGES, metavar="N",
                        help=f"messages per cell (default {DEFAULT_MESSAGES})")
    parser.add_argument("--prefetch", type=int_list, default=list(DEFAULT_PREFETCH),
                        help="IMPORT_PREFETCH values (default " + ",".join(map(str, DEFAULT_PREFETCH)) + ")")
    parser.add_argument("--batch", type=int_list, default=list(DEFAULT_BATCH),
                        help="IMPORT_BATCH_SIZE values (default " + ",".join(map(str, DEFAULT_BATCH)) + ")")
    parser.add_argument("--repeat", type=positive, default=1, help="runs per cell; the median is shown (default 1)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of every cell")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the stream's random seed")
    add_modes_option(parser)
    add_service_options(parser)
    return parser.parse_args(argv)


def run_cell(
    services: Services, template: str, run_id: str, *, prefetch: int, batch: int, messages: int,
    seed: int, model: Model, workdir: Path, attempt: int,
) -> dict[str, Any]:
    target = Target.named(run_id, f"p{prefetch}_b{batch}_{attempt}")
    try:
        clone_database(services, template, target)
        fill(services, [(target, messages)], seed, model.modes)
        drained = drain_worker(services, target, messages=messages, prefetch=prefetch, batch=batch, workdir=workdir)
        verdict = verify(services, target, model)
    finally:
        drop_database(services, target.database)
        delete_queues(services, [target])
    if not verdict.ok or not drained.complete:
        say(f"         p{prefetch} b{batch}: FAIL (exit {drained.exit_code}): " + "; ".join(verdict.problems[:3]))
    return {"rate": drained.rate, "steady_rate": drained.steady_rate, "rss_mb": drained.peak_rss_mb,
            "seconds": drained.seconds,
            "ok": verdict.ok and drained.complete}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    services = Services(args.admin_dsn, args.amqp_host, args.amqp_port)
    run_id = uuid.uuid4().hex[:8]
    template = Target.named(run_id, "template")
    workdir = Path(tempfile.mkdtemp(prefix=f"dbimport-sweep-{run_id}-"))
    cells = [(p, b) for p in args.prefetch for b in args.batch if b <= p]
    say(load_line("start"))
    say(f"{'sweep:':<8} {len(cells)} cells x {args.repeat} run(s), {args.messages} messages each, "
        f"modes {'/'.join(args.modes)}, seed {args.seed}")
    results: dict[tuple[int, int], dict[str, Any]] = {}
    model = Model(args.messages, args.seed, args.modes)
    try:
        init_database(services, template, workdir)
        for prefetch, batch in cells:
            runs = [
                run_cell(services, template.database, run_id, prefetch=prefetch, batch=batch,
                         messages=args.messages, seed=args.seed, model=model, workdir=workdir, attempt=i)
                for i in range(args.repeat)
            ]
            cell = {
                "prefetch": prefetch, "batch": batch,
                "rate": statistics.median(r["rate"] for r in runs),
                "steady_rate": statistics.median(r["steady_rate"] for r in runs),
                "rss_mb": max(r["rss_mb"] for r in runs),
                "rates": [round(r["rate"], 1) for r in runs],
                "ok": all(r["ok"] for r in runs),
            }
            results[(prefetch, batch)] = cell
            say(f"{'cell:':<8} prefetch {prefetch:>5}  batch {batch:>5}  {cell['rate']:>6.0f} msg/s "
                f"(after the start {cell['steady_rate']:>6.0f})  peak RSS {cell['rss_mb']:>4.0f} MB  "
                f"{'OK' if cell['ok'] else 'FAIL'}")
    finally:
        drop_database(services, template.database)
        delete_queues(services, [template])
        shutil.rmtree(workdir, ignore_errors=True)
    say(load_line("end"))
    print_table(results, args.prefetch, args.batch)
    if args.json:
        print(orjson.dumps({"messages": args.messages, "modes": list(args.modes), "repeat": args.repeat,
                            "cells": list(results.values())}).decode())
    return 0 if all(cell["ok"] for cell in results.values()) else 1


def print_table(results: dict[tuple[int, int], dict[str, Any]], prefetches: list[int], batches: list[int]) -> None:
    """msg/s / peak RSS MB, prefetch down, batch across; '-' where batch > prefetch."""
    say("")
    say("msg/s / peak RSS MB   (rows: IMPORT_PREFETCH, columns: IMPORT_BATCH_SIZE)")
    say(f"{'prefetch':>8} | " + " | ".join(f"{b:>11}" for b in batches))
    for p in prefetches:
        cells = []
        for b in batches:
            cell = results.get((p, b))
            cells.append(f"{'-':>11}" if cell is None else f"{cell['rate']:>5.0f} / {cell['rss_mb']:>3.0f}")
        say(f"{p:>8} | " + " | ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
