"""Matching mode `profile_id`: the profile's id; never creates."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from dbimport.api import BadInput, Database, Found, Key, Lookup, Matcher, Query

_PROFILE_ID = re.compile(r"[0-9a-f]{24}")


class ProfileIdMatcher(Matcher):
    name = "profile_id"
    description = "the profile id; no match is an error 404, it never creates"
    schema = {"required": ["profile_id"], "properties": {"profile_id": {"type": "string"}}}
    creates = False

    def prepare(self, message: Mapping[str, Any], db: Database) -> Query:
        profile_id = str(message["profile_id"]).strip().lower()
        if not _PROFILE_ID.fullmatch(profile_id):
            raise BadInput("profile_id must be 24 hexadecimal characters", field="profile_id")
        return Query(keys=(Key("profile", profile_id),), matching_field="profile_id", values={"profile_id": profile_id})

    def find_many(self, lookup: Lookup, queries: Sequence[Query]) -> list[Found]:
        found = lookup.profiles_by_id([q.values["profile_id"] for q in queries])
        return [Found.of(ids, "profile_id") for ids in found]


plugin = ProfileIdMatcher()
