"""The naive reference worker: one message at a time, one commit, one confirm, one ack.

This is the benchmark's yardstick, not the product. It does the same essential
work as the real worker for the benchmark's messages, written the plain way:

- prefetch 1: the broker sends the next message only after this one is acked;
- `json.loads`, then jsonschema validation against `schemas/message.json`
  composed with the mode's fragment. The `Draft7Validator` objects are built
  once at start (the issue's "naive worker with a compiled validator", the
  faster of its two naive figures), not per message;
- the account/database check and the field checks, against the catalog read
  once at start;
- modes `email` (the profile's e-mail or an e-mail subscription),
  `email_profile` (the profile's e-mail) and `custom` (a declared custom field):
  look the profile up, create it with its match value or merge the data into
  it (fields in `data` replace, absent fields stay, `null` clears), and record
  a `profile_created`/`profile_updated` event, all in one transaction;
- the result published with publisher confirms, one confirm per message
  (pika's `confirm_delivery`), then the message acked.

What it leaves out, because the benchmark's messages never need it:
subscriptions, phones, the other eight modes, field types other than
string/int/float/bool, the message log (redelivery idempotency) and the claim
rows (identity across concurrent workers: it runs alone; the unique e-mail
index still refuses a duplicate).

    python bench/naive.py --dsn postgresql://127.0.0.1:5432/bench_x \
        --queue bench.x.in --result-queue bench.x.result --until-empty
"""
from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions
import pika
import psycopg
from psycopg.types.json import Jsonb

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "message.json"
# The same fragments the built-in matchers declare.
EMAIL_FRAGMENT = {"required": ["email"], "properties": {"email": {"type": "string"}}}
FRAGMENTS: dict[str, dict[str, Any]] = {
    "email": EMAIL_FRAGMENT,
    "email_profile": EMAIL_FRAGMENT,
    "custom": {
        "required": ["field_name", "field_value"],
        "properties": {"field_name": {"type": "string"}, "field_value": {"type": ["string", "integer"]}},
    },
}
SYSTEM_STRING_FIELDS = frozenset({
    "_fname", "_lname", "_city", "_country", "_region", "_postal_code", "_vendor",
    "_regcity", "_regcountry", "_regurl", "_browser", "_os",
})
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
INT = re.compile(r"\s*[+-]?\d{1,19}\s*")
# While the queue looks empty, check its depth this often (--until-empty).
IDLE_CHECK_S = 0.5


class BadInput(Exception):
    def __init__(self, code: int, text: str, matching_field: str = "") -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.matching_field = matching_field


# --- validation --------------------------------------------------------------------


def build_validators() -> dict[str, jsonschema.Draft7Validator]:
    """One Draft7Validator per mode, built once: the base schema and the mode's fragment."""
    base = json.loads(SCHEMA_FILE.read_text())
    envelope = {k: v for k, v in base.items() if k not in ("$schema", "$id")}
    return {
        mode: jsonschema.Draft7Validator({"$schema": base["$schema"], "allOf": [envelope, fragment]})
        for mode, fragment in FRAGMENTS.items()
    }


def normal_email(value: Any, field: str) -> str:
    if not isinstance(value, str) or not EMAIL.fullmatch(value.strip()):
        raise BadInput(400, f"{field} is not a valid e-mail address")
    return value.strip().lower()


def check_typed(value: Any, type_: str, field: str) -> Any:
    if value is None:
        return None
    if type_ == "string" and isinstance(value, str):
        return value
    if type_ == "int":
        if isinstance(value, str) and INT.fullmatch(value):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    if type_ == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if type_ == "bool" and isinstance(value, bool):
        return value
    raise BadInput(400, f"{field} must be of type {type_}")


class Catalog:
    """Databases and their declared fields, read once at start."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.account_of = dict(conn.execute("SELECT db_id, account_id FROM databases").fetchall())
        self.fields: dict[int, dict[str, str]] = {}
        for db_id, name, type_ in conn.execute("SELECT db_id, name, type FROM database_fields"):
            self.fields.setdefault(db_id, {})[name] = type_


def check_data(data: Mapping[str, Any], declared: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in data.items():
        field = f"data.{name}"
        if name == "email":
            values[name] = None if value is None else normal_email(value, field)
        elif name in SYSTEM_STRING_FIELDS:
            values[name] = check_typed(value, "string", field)
        elif name in declared:
            values[name] = check_typed(value, declared[name], field)
        else:
            raise BadInput(400, f"{field} is not a field this reference worker knows")
    return values


# --- one message -------------------------------------------------------------------


class Handler:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.validators = build_validators()
        self.catalog = Catalog(conn)

    def handle(self, body: bytes) -> dict[str, Any]:
        feedback_id = ""
        try:
            try:
                message = json.loads(body)
            except ValueError as exc:
                raise BadInput(400, f"message is not valid JSON: {exc}") from None
            if not isinstance(message, dict):
                raise BadInput(400, "message must be a JSON object")
            if isinstance(message.get("feedback_id"), str):
                feedback_id = message["feedback_id"]
            mode = message.get("matching", "email")
            validator = self.validators.get(mode) if isinstance(mode, str) else None
            if validator is None:
                raise BadInput(400, f"matching: unknown matching mode {mode!r}")
            error = jsonschema.exceptions.best_match(validator.iter_errors(message))
            if error is not None:
                raise BadInput(400, error.message)
            return self.apply(message, mode, feedback_id)
        except BadInput as exc:
            return result(exc.code, exc.text, feedback_id, exc.matching_field, "")

    def apply(self, message: dict[str, Any], mode: str, feedback_id: str) -> dict[str, Any]:
        db_id = message["db_id"]
        account = self.catalog.account_of.get(db_id)
        if account is None:
            raise BadInput(404, f"db_id: no database {db_id}")
        if account != message["account_id"]:
            raise BadInput(403, f"db_id: database {db_id} does not belong to account {message['account_id']}")
        declared = self.catalog.fields.get(db_id, {})
        if mode == "custom":
            name = message["field_name"].strip()
            if name not in declared:
                raise BadInput(400, f"field_name {name!r} is not declared")
            match_field, match_value = name, check_typed(message["field_value"], declared[name], "field_value")
        else:
            match_field, match_value = "email", normal_email(message["email"], "email")
        values = check_data(message["data"], declared)
        record = not message.get("skip_triggers", False)
        try:
            with self.conn.transaction():
                found = self.find(db_id, mode, match_field, match_value)
                if len(found) > 1:
                    raise BadInput(409, f"{match_field}: {len(found)} profiles match", match_field)
                if found:
                    profile_id = found[0]
                    self.update(db_id, profile_id, values)
                    kind = "profile_updated"
                else:
                    if message.get("update_only", False):
                        raise BadInput(404, f"{match_field}: no profile matches", match_field)
                    profile_id = secrets.token_hex(12)
                    self.create(db_id, profile_id, {match_field: match_value, **values})
                    kind = "profile_created"
                if record:
                    self.conn.execute(
                        "INSERT INTO events (db_id, profile_id, kind, feedback_id, payload) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        (db_id, profile_id, kind, feedback_id, Jsonb({"fields": values})),
                    )
        except psycopg.errors.UniqueViolation:
            raise BadInput(409, "data.email: the address belongs to another profile", match_field) from None
        return result(0, "", feedback_id, match_field, profile_id)

    def find(self, db_id: int, mode: str, match_field: str, value: Any) -> list[str]:
        if mode == "custom":
            rows = self.conn.execute(
                "SELECT profile_id FROM profiles WHERE db_id = %s AND fields @> %s",
                (db_id, Jsonb({match_field: value})),
            ).fetchall()
        elif mode == "email_profile":
            rows = self.conn.execute(
                "SELECT profile_id FROM profiles WHERE db_id = %s AND email = %s", (db_id, value)
            ).fetchall()
        else:
            rows = self.conn.execute(
                "SELECT profile_id FROM profiles WHERE db_id = %s AND email = %s "
                "UNION SELECT profile_id FROM subscriptions WHERE db_id = %s AND channel = 'email' "
                "AND address = %s",
                (db_id, value, db_id, value),
            ).fetchall()
        return [row[0] for row in rows]

    def create(self, db_id: int, profile_id: str, values: dict[str, Any]) -> None:
        fields = {k: v for k, v in values.items() if k != "email" and v is not None}
        self.conn.execute(
            "INSERT INTO profiles (db_id, profile_id, email, fields) VALUES (%s, %s, %s, %s)",
            (db_id, profile_id, values.get("email"), Jsonb(fields)),
        )

    def update(self, db_id: int, profile_id: str, values: dict[str, Any]) -> None:
        fields = {k: v for k, v in values.items() if k != "email"}
        self.conn.execute(
            "UPDATE profiles SET email = CASE WHEN %s THEN %s ELSE email END, "
            "fields = (fields || %s) - %s::text[], updated_at = now() "
            "WHERE db_id = %s AND profile_id = %s",
            (
                "email" in values, values.get("email"),
                Jsonb({k: v for k, v in fields.items() if v is not None}),
                [k for k, v in fields.items() if v is None],
                db_id, profile_id,
            ),
        )


def result(error: int, text: str, feedback_id: str, matching_field: str, profile_id: str) -> dict[str, Any]:
    return {"error": error, "error_text": text, "feedback_id": feedback_id,
            "matching_field": matching_field, "profile_id": profile_id}


# --- the loop ----------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    handled = 0
    started = time.monotonic()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        handler = Handler(conn)
        amqp = pika.BlockingConnection(pika.ConnectionParameters(host=args.amqp_host, port=args.amqp_port))
        try:
            consume = amqp.channel()
            consume.basic_qos(prefetch_count=1)
            publish = amqp.channel()
            publish.confirm_delivery()
            for method, properties, body in consume.consume(args.queue, inactivity_timeout=IDLE_CHECK_S):
                if method is None:
                    depth = publish.queue_declare(args.queue, passive=True).method.message_count
                    if args.until_empty and depth == 0:
                        break
                    continue
                answer = handler.handle(body)
                # Blocks until the broker confirms it (and raises if it came back unroutable).
                publish.basic_publish(
                    exchange="", routing_key=args.result_queue, body=json.dumps(answer).encode(),
                    properties=pika.BasicProperties(
                        content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                        correlation_id=properties.correlation_id or answer["feedback_id"] or None,
                    ),
                    mandatory=True,
                )
                consume.basic_ack(method.delivery_tag)
                handled += 1
            consume.cancel()
        finally:
            if amqp.is_open:
                amqp.close()
    seconds = time.monotonic() - started
    print(f"naive: handled {handled} messages in {seconds:.1f} s", flush=True)
    return 0


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The benchmark's naive per-message reference worker.")
    parser.add_argument("--dsn", required=True, help="PostgreSQL DSN of a database made by `dbimport-worker init-db`")
    parser.add_argument("--queue", required=True, help="the input queue")
    parser.add_argument("--result-queue", required=True, help="the result queue (must exist)")
    parser.add_argument("--amqp-host", default="127.0.0.1")
    parser.add_argument("--amqp-port", type=int, default=5672)
    parser.add_argument("--until-empty", action="store_true", help="exit once the input queue is drained")
    return parser.parse_args(None if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(run(parse_args()))
