"""The messaging limit: a no-op worker on the project's own broker layer.

It consumes, batches, publishes and acks exactly as `Worker._step` and
`Worker.settle` do, with the same settings read from the environment
(IMPORT_PREFETCH, IMPORT_BATCH_SIZE, IMPORT_BATCH_WAIT_MS, IMPORT_BATCH_MAX_BYTES,
the queues and RABBITMQ_*), but does nothing in between: no decoding, no
validation, no matching, no database. Each message gets one fixed result of
the size of a real one, published durably in one AMQP transaction per batch,
then the batch is acked with one multiple ack. Its rate is what the worker
could reach if handling a message cost nothing: the ceiling set by RabbitMQ,
pika and the broker layer.

    IMPORT_QUEUE=q IMPORT_RESULT_QUEUE=q.result python bench/limit.py --until-empty
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

# Everything this script takes from dbimport, in one place: when these names move,
# only these two lines change.
from dbimport.broker import Broker, Outgoing
from dbimport.config import Settings, load_settings

# A real result's shape and size: error 0, a matching field, a 24-hex profile id.
RESULT_BODY = (
    b'{"error":0,"error_text":"","feedback_id":"b00000","matching_field":"email",'
    b'"profile_id":"0123456789abcdef01234567"}'
)


def run(settings: Settings, *, until_empty: bool) -> int:
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    wait_s = settings.batch_wait_ms / 1000
    broker = Broker(settings)
    handled = 0
    started = time.monotonic()
    broker.connect()
    try:
        broker.start_consuming()
        while not stopping:
            deliveries = broker.fetch(
                settings.batch_size, max_bytes=settings.batch_max_bytes,
                first_wait_s=wait_s if until_empty else 0.5, batch_wait_s=wait_s,
            )
            if not deliveries:
                # As the worker: the depth's reply follows any delivery sent before it.
                if until_empty and broker.queue_depth() == 0 and broker.buffered == 0:
                    break
                continue
            # The bench's messages carry no correlation id; the worker then uses the
            # feedback_id, which a no-op cannot read: the delivery tag stands in for it.
            broker.publish([
                Outgoing(queue=settings.result_queue, body=RESULT_BODY,
                         correlation_id=d.correlation_id or str(d.tag))
                for d in deliveries
            ])
            broker.ack_through(max(d.tag for d in deliveries))
            handled += len(deliveries)
    finally:
        broker.stop_consuming()
        broker.close()
    print(f"limit: handled {handled} messages in {time.monotonic() - started:.1f} s", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A no-op worker: the broker layer's batches, results and acks only.")
    parser.add_argument("--until-empty", action="store_true", help="exit once the input queue is drained")
    args = parser.parse_args(argv)
    return run(load_settings(), until_empty=args.until_empty)


if __name__ == "__main__":
    sys.exit(main())
