"""The `loyalty` matcher: a card number, normalised, searched in the custom field `loyalty_card`."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dbimport.api import BadInput, Database, Found, Key, Lookup, Matcher, ProfileWrite, Query, canonical

#: the custom profile field that holds a member's card; each database that
#: uses the mode declares it as a `string` field
CARD_FIELD = "loyalty_card"
MATCHING_FIELD = "card_number"
# Printed cards group their digits ("LC-0012 3456"); the stored form has no separators.
_SEPARATORS = re.compile(r"[\s-]+")
_CARD = re.compile(r"[A-Z0-9]{4,32}")


def normalise_card(value: object) -> str:
    """`LC-0012 3456` -> `LC00123456`; `BadInput` naming card_number if it is no card."""
    if not isinstance(value, str):
        raise BadInput(f"{MATCHING_FIELD} must be a string", field=MATCHING_FIELD)
    card = _SEPARATORS.sub("", value).upper()
    if not card:
        raise BadInput(f"{MATCHING_FIELD} is empty", field=MATCHING_FIELD)
    if not _CARD.fullmatch(card):
        raise BadInput(
            f"{MATCHING_FIELD} is not a card number (4 to 32 letters and digits)", field=MATCHING_FIELD
        )
    return card


def check_declared(db: Database) -> None:
    """The mode writes `loyalty_card`, so the database must declare it, as a string."""
    decl = db.fields.get(CARD_FIELD)
    if decl is None or decl.type != "string":
        raise BadInput(
            f"field {CARD_FIELD} is not declared as a string field for database {db.db_id}; "
            "declare it to use matching mode loyalty",
            field=CARD_FIELD,
        )


class LoyaltyMatcher(Matcher):
    name = "loyalty"
    description = "a loyalty card number (spaces and dashes ignored) in the custom field loyalty_card"
    schema = {
        "required": [MATCHING_FIELD],
        "properties": {MATCHING_FIELD: {"type": "string", "maxLength": 64}},
    }

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        check_declared(db)
        card = normalise_card(message[MATCHING_FIELD])
        return Query(
            # The same kind as the `custom` mode on this field: both modes claim
            # one lock per card, so they never create two profiles for it.
            keys=(Key(f"field:{CARD_FIELD}", canonical(card)),),
            matching_field=MATCHING_FIELD,
            values={"card": card},
        )

    def find(self, lookup: Lookup, query: Query) -> Found:
        [ids] = lookup.profiles_by_field(CARD_FIELD, [query.values["card"]])
        return Found.of(ids, MATCHING_FIELD)

    def new_profile(self, query: Query) -> ProfileWrite:
        return ProfileWrite(values={CARD_FIELD: query.values["card"]})
