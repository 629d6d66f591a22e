"""The message: a body decoded, bounded, and validated against the schemas."""
from __future__ import annotations

import importlib.resources
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import fastjsonschema
import jsonschema
import jsonschema.exceptions
import orjson

from .errors import BadInput, TooLarge
from .feedback import UTF8_BOM

DEFAULT_MODE = "email"
MESSAGE_SCHEMA_FILE = "message.json"
_JSON_TYPES = {
    "integer": "an integer",
    "string": "a string",
    "object": "an object",
    "boolean": "true or false",
    "array": "a list",
    "number": "a number",
}


@dataclass(frozen=True, slots=True)
class Envelope:
    """A schema-valid message; `body` keeps every key for the matcher."""

    body: Mapping[str, Any]
    account_id: int
    db_id: int
    data: Mapping[str, Any]
    mode: str
    feedback_id: str
    update_only: bool
    skip_triggers: bool
    skip_invalid_subscriptions: bool
    resource_id: int | None


def parse(raw: bytes, *, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; 413 if too large, 400 if it is not one.

    A UTF-8 byte order mark before the JSON is accepted.
    """
    if len(raw) > max_bytes:
        raise TooLarge(f"message is {len(raw)} bytes, over the limit of {max_bytes}")
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM):]
    if not raw.strip():
        raise BadInput("message is empty; expected a JSON object")
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadInput(not_json(raw, exc)) from None
    if not isinstance(message, dict):
        raise BadInput(f"message must be a JSON object, not {type(message).__name__}")
    return message


def not_json(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    """Why `raw` is not JSON, in one line: invalid UTF-8 and where, or the JSON error."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"message is not valid UTF-8: byte 0x{raw[bad.start]:02x} at byte {bad.start} "
            f"({bad.reason}); the body must be JSON in UTF-8"
        )
    if "surrogates not allowed" in str(exc):
        return "message is not valid JSON: a \\u escape is a lone UTF-16 surrogate, which is no character"
    return f"message is not valid JSON: {exc}"


def check_limits(message: dict[str, Any], raw: bytes, *, max_depth: int, max_string_chars: int) -> None:
    """400 if the object nests deeper than `max_depth`, holds a NUL character, or a
    top-level string (a match value, whatever the mode) longer than `max_string_chars`.

    Strings inside `data` are bounded by their field's check.
    """
    for key, value in message.items():
        if isinstance(value, str) and len(value) > max_string_chars:
            raise BadInput(f"{key} is longer than {max_string_chars} characters", field=key)
    # A cheap bound first: no more brackets than the limit means no deeper nesting.
    if raw.count(b"{") + raw.count(b"[") > max_depth:
        check_depth(message, max_depth)
    if b"\\u0000" in raw:
        check_no_nul(message)


def check_depth(value: Any, max_depth: int) -> None:
    """400 if objects and lists nest more than `max_depth` deep (the message itself is 1)."""
    stack = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        children = (
            ((_join(path, k), v) for k, v in item.items()) if isinstance(item, dict)
            else ((f"{path}[{i}]", v) for i, v in enumerate(item))
        )
        for child_path, child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > max_depth:
                    raise BadInput(f"{child_path} is nested deeper than {max_depth} levels", field=child_path)
                stack.append((child, depth + 1, child_path))


def check_no_nul(value: Any) -> None:
    """PostgreSQL stores no NUL character in text: refuse it here, naming the key."""
    stack = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            raise BadInput(f"{path or 'message'} contains a NUL character", field=path)
        if isinstance(item, dict):
            for k, v in item.items():
                if "\x00" in k:
                    raise BadInput(f"{path or 'message'} has a key with a NUL character", field=path)
                stack.append((v, _join(path, k)))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def base_schema() -> dict[str, Any]:
    raw = importlib.resources.files("dbimport.schemas").joinpath(MESSAGE_SCHEMA_FILE).read_bytes()
    schema: dict[str, Any] = orjson.loads(raw)
    return schema


def compose(base: Mapping[str, Any], fragment: Mapping[str, Any]) -> dict[str, Any]:
    """The base message schema with a matcher's fragment: both must hold."""
    if not fragment:
        return dict(base)
    return {"$schema": base["$schema"], "allOf": [
        {k: v for k, v in base.items() if k not in ("$schema", "$id")}, dict(fragment)
    ]}


class MessageValidator:
    """A compiled validator per mode for the hot path; jsonschema for the error text."""

    def __init__(self, fragments: Mapping[str, Mapping[str, Any]]) -> None:
        self._base = base_schema()
        self._base_precise = jsonschema.Draft7Validator(self._base)
        self._fast: dict[str, Callable[[Any], Any]] = {}
        self._precise: dict[str, jsonschema.Draft7Validator] = {}
        for mode, fragment in fragments.items():
            schema = compose(self._base, fragment)
            self._fast[mode] = fastjsonschema.compile(schema)
            self._precise[mode] = jsonschema.Draft7Validator(schema)

    @property
    def modes(self) -> list[str]:
        return sorted(self._fast)

    def validate(self, message: Mapping[str, Any]) -> Envelope:
        mode = message.get("matching", DEFAULT_MODE)
        fast = self._fast.get(mode) if isinstance(mode, str) else None
        if fast is None:
            self._raise_first_error(self._base_precise, message)
            raise BadInput(
                f"matching: unknown matching mode {str(mode)[:64]!r}; known modes: "
                + ", ".join(self.modes),
                field="matching",
            )
        try:
            fast(message)
        except fastjsonschema.JsonSchemaException:
            # The envelope's own keys first: a missing `data` is named before `email`.
            self._raise_first_error(self._base_precise, message)
            self._raise_first_error(self._precise[mode], message)
            raise BadInput("message does not match the message schema") from None
        resource_id = message.get("resource_id")
        return Envelope(
            body=message,
            account_id=int(message["account_id"]),
            db_id=int(message["db_id"]),
            data=message["data"],
            mode=mode,
            feedback_id=message.get("feedback_id", ""),
            update_only=bool(message.get("update_only", False)),
            skip_triggers=bool(message.get("skip_triggers", False)),
            skip_invalid_subscriptions=bool(message.get("skip_invalid_subscriptions", False)),
            resource_id=None if resource_id is None else int(resource_id),
        )

    @staticmethod
    def _raise_first_error(validator: jsonschema.Draft7Validator, message: Mapping[str, Any]) -> None:
        error = jsonschema.exceptions.best_match(validator.iter_errors(message))
        if error is not None:
            raise BadInput(error_text(error), field=_path(error) or None)


def _path(error: jsonschema.exceptions.ValidationError) -> str:
    parts = ""
    for part in error.absolute_path:
        parts = f"{parts}[{part}]" if isinstance(part, int) else _join(parts, str(part))
    return parts


def error_text(error: jsonschema.exceptions.ValidationError) -> str:
    """One line naming the key at fault, without echoing its (maybe huge) value."""
    path = _path(error)
    keyword = error.validator
    if keyword == "required":
        match = re.match(r"'(.+)' is a required property", error.message)
        name = match.group(1) if match else "a key"
        return f"{_join(path, name)} is required"
    subject = path or "message"
    alternatives = error.validator_value if keyword == "anyOf" else None
    if isinstance(alternatives, list) and all(
        isinstance(a, dict) and set(a) == {"required"} for a in alternatives
    ):
        names = [" and ".join(a["required"]) for a in alternatives]
        return f"{' or '.join(_join(path, n) for n in names)} is required"
    value: Any = error.validator_value
    if keyword == "type":
        names = [value] if isinstance(value, str) else list(value)
        return f"{subject} must be " + " or ".join(_JSON_TYPES.get(n, n) for n in names)
    if keyword == "minimum":
        return f"{subject} must be at least {error.validator_value}"
    if keyword == "maximum":
        return f"{subject} must be at most {error.validator_value}"
    if keyword == "maxLength":
        return f"{subject} must be at most {error.validator_value} characters long"
    if keyword == "minLength":
        return f"{subject} must not be empty" if error.validator_value == 1 else (
            f"{subject} must be at least {error.validator_value} characters long"
        )
    if keyword == "enum":
        return f"{subject} must be one of " + ", ".join(map(str, value))
    if keyword == "pattern":
        return f"{subject} has the wrong format"
    return f"{subject} is invalid ({keyword})"
