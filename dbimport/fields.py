"""Field types: checking and canonicalising each value a message may write."""
from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import math
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import normalize
from .errors import BadInput

# A checker takes the raw JSON value and returns the canonical one, or raises
# ValueError with a reason; the caller turns that into a 400 naming the field.
Checker = Callable[[Any, "Limits", "FieldDecl"], Any]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_TAG_SEPARATORS = re.compile(r"[,|;]")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})"
)


@dataclass(frozen=True)
class FieldDecl:
    """A declared custom field: its name, type, and (for `list`) its options."""

    name: str
    type: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limits:
    """Per-value limits; see `IMPORT_MAX_STRING_CHARS` and friends."""

    max_string_chars: int = 65536
    max_list_items: int = 1000


def _string(value: Any, limits: Limits, decl: FieldDecl) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if len(value) > limits.max_string_chars:
        raise ValueError(f"is longer than {limits.max_string_chars} characters")
    return value


def _int(value: Any, limits: Limits, decl: FieldDecl) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,19}\s*", value):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("must be an integer")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("is out of the 64-bit integer range")
    return value


def _float(value: Any, limits: Limits, decl: FieldDecl) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError("must be a number") from None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("is out of range")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _bool(value: Any, limits: Limits, decl: FieldDecl) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("must be true or false")


def _date(value: Any, limits: Limits, decl: FieldDecl) -> str:
    if isinstance(value, str):
        text = value.strip()
        if _DATE.fullmatch(text):
            try:
                return dt.date.fromisoformat(text).isoformat()
            except ValueError:
                raise ValueError("is not a real calendar date") from None
        if _DATETIME.fullmatch(text):
            return _datetime(text, limits, decl)[:10]
    raise ValueError("must be a date (YYYY-MM-DD) or an RFC 3339 date-time")


def _datetime(value: Any, limits: Limits, decl: FieldDecl) -> str:
    if not isinstance(value, str) or not _DATETIME.fullmatch(value.strip()):
        raise ValueError("must be an RFC 3339 date-time, e.g. 2024-05-01T12:00:00Z")
    text = value.strip().replace("z", "Z").replace("t", "T")
    try:
        # fromisoformat takes 'Z' from Python 3.11; spell it out for 3.10.
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise ValueError("is not a real date-time") from None
    return parsed.isoformat()


def _date_or_datetime(value: Any, limits: Limits, decl: FieldDecl) -> str:
    if isinstance(value, str) and _DATE.fullmatch(value.strip()):
        return _date(value, limits, decl)
    try:
        return _datetime(value, limits, decl)
    except ValueError:
        raise ValueError("must be a date (YYYY-MM-DD) or an RFC 3339 date-time") from None


def _ip(value: Any, limits: Limits, decl: FieldDecl) -> str:
    if not isinstance(value, str):
        raise ValueError("must be an IP address")
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError("is not a valid IP address") from None


@functools.lru_cache(maxsize=1)
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _tz(value: Any, limits: Limits, decl: FieldDecl) -> str:
    if not isinstance(value, str) or value not in _time_zones():
        raise ValueError("must be an IANA time zone name, e.g. Europe/Moscow")
    return value


def _sex(value: Any, limits: Limits, decl: FieldDecl) -> str:
    if value not in ("male", "female"):
        raise ValueError("must be male or female")
    return str(value)


def _list_option(value: Any, limits: Limits, decl: FieldDecl) -> str:
    if not isinstance(value, str) or value not in decl.options:
        raise ValueError(f"must be one of {', '.join(decl.options) or '(no options declared)'}")
    return value


def split_tags(value: Any, limits: Limits) -> list[str]:
    """A list of strings, or one string separated by `,` `|` or `;`: trimmed, unique."""
    if isinstance(value, str):
        items: list[Any] = _TAG_SEPARATORS.split(value)
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError("must be a list of strings or a string of tags separated by , | or ;")
    if len(items) > limits.max_list_items:
        raise ValueError(f"has more than {limits.max_list_items} tags")
    tags: dict[str, None] = {}
    for item in items:
        if not isinstance(item, str):
            raise ValueError("must hold only strings")
        tag = item.strip()
        if len(tag) > limits.max_string_chars:
            raise ValueError(f"has a tag longer than {limits.max_string_chars} characters")
        if tag:
            tags[tag] = None
    return list(tags)


def _tags(value: Any, limits: Limits, decl: FieldDecl) -> list[str]:
    return split_tags(value, limits)


def _object(value: Any, limits: Limits, decl: FieldDecl) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def _arr_object(value: Any, limits: Limits, decl: FieldDecl) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("must be a list of JSON objects")
    if len(value) > limits.max_list_items:
        raise ValueError(f"has more than {limits.max_list_items} items")
    return value


CHECKERS: Mapping[str, Checker] = {
    "int": _int,
    "float": _float,
    "string": _string,
    "bool": _bool,
    "date": _date,
    "list": _list_option,
    "ip": _ip,
    "tags": _tags,
    "object": _object,
    "arr_object": _arr_object,
    # Types of system fields only.
    "datetime": _datetime,
    "date_or_datetime": _date_or_datetime,
    "timezone": _tz,
    "sex": _sex,
}

SYSTEM_FIELDS: Mapping[str, FieldDecl] = {
    decl.name: decl
    for decl in [
        *(FieldDecl(name, "string") for name in (
            "_fname", "_lname", "_city", "_country", "_region", "_postal_code", "_vendor",
            "_regcity", "_regcountry", "_regurl", "_browser", "_os",
        )),
        FieldDecl("_bdate", "date_or_datetime"),
        FieldDecl("_sex", "sex"),
        FieldDecl("_regdate", "datetime"),
        FieldDecl("_regip", "ip"),
        FieldDecl("_ip", "ip"),
        FieldDecl("_tz", "timezone"),
        FieldDecl("_status", "int"),
    ]
}


def check_value(decl: FieldDecl, value: Any, limits: Limits, *, path: str) -> Any:
    """The canonical form of `value` for `decl`; a 400 naming `path` if it does not fit."""
    if value is None:
        return None
    try:
        return CHECKERS[decl.type](value, limits, decl)
    except ValueError as exc:
        raise BadInput(f"{path} {exc}", field=path) from None


def check_phones(value: Any, limits: Limits, *, path: str = "data.phones") -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise BadInput(f"{path} must be a list of phone numbers", field=path)
    if len(value) > limits.max_list_items:
        raise BadInput(f"{path} has more than {limits.max_list_items} items", field=path)
    phones: dict[str, None] = {}
    for i, item in enumerate(value):
        phones[normalize.phone(item, field=f"{path}[{i}]")] = None
    return list(phones)
