"""Match values in their canonical form: e-mail addresses and phone numbers."""
from __future__ import annotations

import re

from .errors import BadInput

MAX_EMAIL_CHARS = 254
# The HTML living standard's "valid e-mail address", plus a dot in the domain:
# strict enough to refuse typos, loose enough for real-world local parts.
_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
_PHONE_SEPARATORS = re.compile(r"[\s\-.()\[\]]")
_PHONE = re.compile(r"\+?[0-9]{7,15}")


def email(value: object, *, field: str = "email") -> str:
    """Trimmed and lower-cased; `BadInput` naming `field` if it is not an address."""
    if not isinstance(value, str):
        raise BadInput(f"{field} must be a string", field=field)
    text = value.strip().lower()
    if not text:
        raise BadInput(f"{field} is empty", field=field)
    if len(text) > MAX_EMAIL_CHARS or not _EMAIL.fullmatch(text):
        raise BadInput(f"{field} is not a valid e-mail address", field=field)
    return text


def phone(value: object, *, field: str = "phone") -> str:
    """`+` and 7 to 15 digits, separators removed; `BadInput` naming `field` otherwise.

    A number without its `+` is taken as international: `79000000000` and
    `+7 900 000-00-00` are the same phone.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise BadInput(f"{field} must be a string", field=field)
    text = _PHONE_SEPARATORS.sub("", value)
    if not text:
        raise BadInput(f"{field} is empty", field=field)
    if not _PHONE.fullmatch(text):
        raise BadInput(f"{field} must be a phone number of 7 to 15 digits", field=field)
    return text if text.startswith("+") else "+" + text


# An identity value (an address, a subscription id) is a key of a btree index,
# whose entries hold at most about 2,700 bytes.
MAX_IDENTITY_BYTES = 1000


def text(value: object, *, field: str, max_bytes: int = 255) -> str:
    """A non-empty trimmed string, for ids and names that are matched verbatim.

    The bound is in UTF-8 bytes: such values are index keys.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise BadInput(f"{field} must be a string", field=field)
    result = value.strip()
    if not result:
        raise BadInput(f"{field} is empty", field=field)
    if len(result.encode("utf-8", "surrogatepass")) > max_bytes:
        raise BadInput(f"{field} is longer than {max_bytes} bytes", field=field)
    return result
