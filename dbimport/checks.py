"""`check`: every precondition of a healthy worker, each problem on its own line."""
from __future__ import annotations

import pika
import pika.exceptions

from .broker import PRECONDITION_FAILED, connection_parameters
from .config import Settings, log_safe
from .errors import DatabaseUnavailable
from .schema import current_version, installed_version, missing_unique_keys
from .store import Store


def run_checks(settings: Settings) -> tuple[list[str], bool]:
    """(problems, whether a service was unreachable)."""
    problems: list[str] = []
    unreachable = False
    try:
        problems += check_database(settings)
    except DatabaseUnavailable as exc:
        problems.append(f"postgresql: unreachable: {log_safe(str(exc), settings)}")
        unreachable = True
    try:
        problems += check_queues(settings)
    except (pika.exceptions.AMQPError, OSError) as exc:
        problems.append(f"rabbitmq: unreachable: {type(exc).__name__}: {log_safe(str(exc), settings)}")
        unreachable = True
    return problems, unreachable


def check_database(settings: Settings) -> list[str]:
    store = Store(settings.postgres_dsn, application_name="dbimport-check")
    try:
        with store.transaction() as conn:
            version = installed_version(conn)
            if version != current_version():
                return [
                    f"schema: at version {version}, expected {current_version()}: "
                    "run `dbimport-worker init-db`"
                ]
            return [f"schema: missing unique key on {key}" for key in missing_unique_keys(conn)]
    finally:
        store.close()


def check_queues(settings: Settings) -> list[str]:
    """Declare each existing queue with our arguments: RabbitMQ refuses a difference."""
    wanted = {
        settings.import_queue: {},
        settings.result_queue: {"x-message-ttl": settings.result_ttl_ms},
        settings.dead_queue: {},
    }
    problems = []
    connection = pika.BlockingConnection(connection_parameters(settings))
    try:
        for queue, arguments in wanted.items():
            channel = connection.channel()
            try:
                channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                continue  # absent: the worker declares it as configured on start
            channel = connection.channel()
            try:
                channel.queue_declare(queue, durable=True, arguments=arguments or None)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != PRECONDITION_FAILED:
                    raise
                problems.append(f"queue {queue}: arguments differ from the configuration: {exc.reply_text}")
    finally:
        connection.close()
    return problems
