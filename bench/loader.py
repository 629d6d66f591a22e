"""Benchmark of `dbimport-load`: publish an N-row CSV, report rows/s and peak RSS.

Generates a CSV of N profiles (default 1,000,000) in a temporary folder, runs
`dbimport-load FILE --map ...` as a subprocess against a queue of its own,
polls the loader's peak resident set (VmHWM), and prints:

    csv:     1000000 rows, 58.1 MB
    loader:  1000000 rows in 123.0 s = 8130 rows/s, peak RSS 34 MB (batch 500)
    queue:   1000000 messages published

The queue is deleted afterwards; nothing is imported (no worker runs), so the
figure is the loader's own cost. `--wait-timeout S` adds `--wait` with that
timeout and no worker: every row is reported unanswered, the report's worst case.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pika
from throughput import vm_hwm_kb

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.05


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["Email", "First Name", "Last Name", "City", "CRM"])
        for i in range(rows):
            out.writerow([f"user{i}@bench.example", f"First{i}", f"Last{i}", "Berlin", 1_000_000 + i])


def run(args: argparse.Namespace) -> int:
    queue = f"bench.loader.{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.ConnectionParameters(args.amqp_host, args.amqp_port))
    channel = connection.channel()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
            path = Path(tmp) / "profiles.csv"
            write_csv(path, args.rows)
            print(f"csv:     {args.rows} rows, {path.stat().st_size / 1e6:.1f} MB", flush=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "IMPORT_"))}
            env.update(
                DBIMPORT_CONFIG=str(Path(tmp) / "main.json"), RABBITMQ_HOST=args.amqp_host,
                RABBITMQ_PORT=str(args.amqp_port), IMPORT_QUEUE=queue,
                IMPORT_RESULT_QUEUE=f"{queue}.results",
            )
            (Path(tmp) / "main.json").write_text("{}")
            command = [
                sys.executable, "-m", "dbimport.loader", str(path), "--account-id", "1", "--db-id", "1",
                "--map", "email=Email,_fname=First Name,_lname=Last Name,_city=City,CRM_ID=CRM",
                "--batch", str(args.batch), "--no-progress", "--report", str(Path(tmp) / "report.csv"),
            ]
            if args.wait_timeout is not None:
                command += ["--wait", "--timeout", str(args.wait_timeout)]
            started = time.monotonic()
            loader = subprocess.Popen(command, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            peak_kb = 0
            while loader.poll() is None:
                peak_kb = max(peak_kb, vm_hwm_kb(loader.pid))
                time.sleep(POLL_S)
            seconds = time.monotonic() - started
            _out, err = loader.communicate()
            if loader.returncode not in (0, 1):
                print(err.decode()[-2000:], file=sys.stderr)
                return 1
            print(
                f"loader:  {args.rows} rows in {seconds:.1f} s = {args.rows / seconds:.0f} rows/s, "
                f"peak RSS {peak_kb / 1024:.0f} MB (batch {args.batch}"
                + (f", --wait --timeout {args.wait_timeout}" if args.wait_timeout is not None else "") + ")"
            )
            depth = channel.queue_declare(queue, passive=True).method.message_count
            print(f"queue:   {depth} messages published")
            return 0 if depth == args.rows else 1
    finally:
        channel.queue_delete(queue)
        channel.queue_delete(f"{queue}.results")
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="CSV rows (default 1,000,000)")
    parser.add_argument("--batch", type=int, default=500, help="the loader's --batch (default 500)")
    parser.add_argument("--wait-timeout", type=float, help="add --wait with this --timeout (no worker runs)")
    parser.add_argument("--amqp-host", default="127.0.0.1")
    parser.add_argument("--amqp-port", type=int, default=5672)
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
