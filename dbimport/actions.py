"""Field actions: `{"action": A, "value": V}` in place of a field's value, checked
against the field's type, composed in queue order, applied to a known value here or
to the stored one by the database (migrations/0002_field_actions.sql).

`set` is the plain value and `unset` is `null`, so neither outlives parsing. The
others become a `Pending`: operations on the value stored when the write commits.
Pending operations on a value known in Python (a profile created by the batch, a
value an earlier message of the batch set) are applied at once.
"""
from __future__ import annotations

import decimal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import BadInput
from .fields import INT64_MAX, INT64_MIN, Limits, split_tags

ACTIONS = ("set", "unset", "incr", "add", "delete", "upsert")
# What each action may be applied to: a field's kind (its declared type, or "phones").
FITS: Mapping[str, frozenset[str]] = {
    "incr": frozenset({"int", "float"}),
    "add": frozenset({"tags", "arr_object", "phones"}),
    "delete": frozenset({"tags", "arr_object", "phones"}),
    "upsert": frozenset({"object", "arr_object"}),
}
MAX_PATH_SEGMENTS = 16


@dataclass(frozen=True, slots=True)
class Op:
    """One operation on a stored value, as the database function takes it."""

    name: str  # incr, add, delete, upsert_object, upsert_array
    value: Any
    path: tuple[str, ...] = ()  # upsert: the dotted submatch, split
    integer: bool = False  # incr: the field holds integers
    field: str = ""  # the field's path in the message, for errors

    def as_json(self) -> dict[str, Any]:
        """The operation for `dbimport_apply` (see the migration)."""
        doc: dict[str, Any] = {"op": self.name, "v": self.value}
        if self.path:
            doc["path"] = list(self.path)
        if self.integer:
            doc["int"] = True
        if self.field:
            doc["field"] = self.field
        return doc

    def as_action(self) -> dict[str, Any]:
        """The action as the message gave it, for an event's payload."""
        name = "upsert" if self.name.startswith("upsert") else self.name
        action: dict[str, Any] = {"action": name, "value": self.value}
        if self.path:
            action["submatch"] = ".".join(self.path)
        return action


@dataclass(frozen=True, slots=True)
class Pending:
    """Operations on the stored value, in order: what a field's actions leave to the database."""

    ops: tuple[Op, ...]

    def then(self, later: Pending) -> Pending:
        """These operations, then `later`'s; neighbouring increments are summed, so that
        a batch of increments to one field is one operation."""
        ops = list(self.ops)
        for op in later.ops:
            last = ops[-1] if ops else None
            if last is not None and last.name == op.name == "incr" and last.integer == op.integer:
                total = last.value + op.value if op.integer else float(
                    decimal.Decimal(repr(last.value)) + decimal.Decimal(repr(op.value)))
                ops[-1] = Op("incr", total, integer=op.integer, field=op.field)
            else:
                ops.append(op)
        return Pending(tuple(ops))

    def as_json(self) -> list[dict[str, Any]]:
        return [op.as_json() for op in self.ops]

    def as_payload(self) -> Any:
        actions = [op.as_action() for op in self.ops]
        return actions[0] if len(actions) == 1 else actions


def is_action(value: Any) -> bool:
    """Whether `value` is an action object: an object whose `action` is a known name."""
    return isinstance(value, dict) and value.get("action") in ACTIONS


def parse(
    raw: Any, kind: str, path: str, *, check: Callable[[Any], Any], limits: Limits, removable: bool = True,
) -> Any:
    """A field's value: plain (checked by `check`), None (cleared), or a Pending.

    `kind` is the field's type (`int`, `tags`..., or `phones`, `email`); `check`
    canonicalises a plain value for it; `removable` is False for `email`.
    An object holding an `action` key that is no action is a plain value for an
    `object` field (wrap it in `set` to store an action-like object) and a 400
    naming the field for any other.
    """
    if not isinstance(raw, dict) or "action" not in raw:
        return check(raw)
    name = raw.get("action")
    if name not in ACTIONS:
        if kind == "object":
            return check(raw)
        raise BadInput(
            f"{path}: unknown action {str(name)[:32]!r}; the actions are {', '.join(ACTIONS)}", field=path
        )
    extra = sorted(set(raw) - {"action", "value", "submatch"})
    if extra or ("submatch" in raw and name != "upsert"):
        key = extra[0] if extra else "submatch"
        raise BadInput(f"{path}: {key!r} is not a key of a {name} action", field=path)
    if name == "set":
        if "value" not in raw:
            raise BadInput(f"{path}: the set action needs a value", field=path)
        return check(raw["value"])
    if name == "unset":
        if not removable:
            raise BadInput(f"{path}: cannot be unset", field=path)
        if raw.get("value") is not None:
            raise BadInput(f"{path}: the unset action takes no value", field=path)
        return None
    if kind not in FITS[name]:
        raise BadInput(f"{path}: the {name} action does not fit a {kind} field", field=path)
    if "value" not in raw:
        raise BadInput(f"{path}: the {name} action needs a value", field=path)
    return Pending((_op(name, raw, kind, path, check=check, limits=limits),))


def _op(name: str, raw: Mapping[str, Any], kind: str, path: str, *, check: Callable[[Any], Any], limits: Limits) -> Op:
    value = raw["value"]
    if name == "incr":
        integer = kind == "int"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            raise BadInput(f"{path}: the incr value must be {'an integer' if integer else 'a number'}", field=path)
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            raise BadInput(f"{path}: the incr value must be a finite number", field=path)
        if integer and not INT64_MIN <= value <= INT64_MAX:
            raise BadInput(f"{path}: the incr value is out of the 64-bit integer range", field=path)
        return Op("incr", value, integer=integer, field=path)
    if name in ("add", "delete"):
        return Op(name, _elements(value, kind, path, check=check, limits=limits), field=path)
    submatch = raw.get("submatch")
    if not isinstance(submatch, str) or not all(submatch.split(".")):
        raise BadInput(f"{path}: upsert needs a submatch, a dotted path such as \"address.city\"", field=path)
    segments = tuple(submatch.split("."))
    if len(segments) > MAX_PATH_SEGMENTS:
        raise BadInput(f"{path}: the submatch has more than {MAX_PATH_SEGMENTS} parts", field=path)
    if kind == "arr_object":
        if not isinstance(value, dict):
            raise BadInput(f"{path}: the upsert value of an arr_object field must be an object", field=path)
        if get_path(value, segments) is None:
            raise BadInput(f"{path}: the upsert value holds nothing at {submatch!r}", field=path)
        return Op("upsert_array", value, segments, field=path)
    return Op("upsert_object", value, segments, field=path)


def _elements(value: Any, kind: str, path: str, *, check: Callable[[Any], Any], limits: Limits) -> list[Any]:
    """The elements an add or delete names: checked, canonical, each once, in order."""
    if kind == "tags":
        try:
            return split_tags(value, limits)
        except ValueError as exc:
            raise BadInput(f"{path}: the value {exc}", field=path) from None
    if not isinstance(value, list):
        raise BadInput(f"{path}: the value must be a list", field=path)
    if len(value) > limits.max_list_items:
        raise BadInput(f"{path}: the value has more than {limits.max_list_items} items", field=path)
    checked = check(value) or []  # phones: canonical and unique; arr_object: objects
    unique: list[Any] = []
    for item in checked:
        if item not in unique:
            unique.append(item)
    return unique


# --- applying operations to a known value ---------------------------------------------


def compose(earlier: Any, later: Any, *, known: bool) -> Any:
    """A field's value after `earlier` then `later`; `known`: whether `earlier` is a
    value (a plain one, or None for absent) rather than nothing known of the stored one."""
    if not isinstance(later, Pending):
        return later
    if isinstance(earlier, Pending):
        return earlier.then(later)
    if not known:
        return later
    return apply_all(earlier, later)


def apply_all(value: Any, pending: Pending) -> Any:
    for op in pending.ops:
        value = apply(value, op)
    return value


def apply(value: Any, op: Op) -> Any:
    """`op` applied to `value` (None: the field is absent), as the database function does."""
    if op.name == "incr":
        base = value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
        if op.integer:
            total = int(base) + int(op.value)
            if not INT64_MIN <= total <= INT64_MAX:
                raise BadInput(f"{op.field}: the increment takes it out of the 64-bit integer range", field=op.field)
            return total
        return float(decimal.Decimal(repr(base)) + decimal.Decimal(repr(op.value)))
    items = list(value) if isinstance(value, list) else []
    if op.name == "add":
        return items + [v for v in op.value if v not in items]
    if op.name == "delete":
        return [v for v in items if v not in op.value]
    if op.name == "upsert_object":
        return set_path(value if isinstance(value, dict) else {}, op.path, op.value)
    key = get_path(op.value, op.path)
    matched = [element for element in items if isinstance(element, dict) and get_path(element, op.path) == key]
    if not matched:
        return [*items, op.value]
    return [{**element, **op.value} if element in matched else element for element in items]


def get_path(value: Any, path: tuple[str, ...]) -> Any:
    for segment in path:
        if not isinstance(value, dict):
            return None
        value = value.get(segment)
    return value


def set_path(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of `document` with `value` at `path`, creating (or replacing by) objects on the way."""
    head, rest = path[0], path[1:]
    inner = document.get(head)
    copy = dict(document)
    copy[head] = set_path(inner if isinstance(inner, dict) else {}, rest, value) if rest else value
    return copy
