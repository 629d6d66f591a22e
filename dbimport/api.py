"""The public plugin API: the one module a matching-mode plugin imports.

Stability: `API_VERSION` follows semantic versioning, independently of the
package's version and of its internal modules. Everything in `__all__` keeps
its name, signature and meaning within a major version: a minor version only
adds (names, optional arguments, methods with defaults); a major version is
announced in the changelog. Any other `dbimport` module is internal and may
change in any release; a plugin that imports one is on its own.

The guide is docs/writing-a-matcher.md.
"""
from __future__ import annotations

from .catalog import Database, Resource
from .config import Settings, load_settings
from .errors import BadInput, Conflict, Forbidden, NotFound
from .events import (
    PROFILE_CREATED,
    PROFILE_UPDATED,
    SUBSCRIBED,
    SUBSCRIPTION_STATUS_CHANGED,
    TriggerEvent,
)
from .families import (
    EMAIL,
    PHONE,
    EitherIdentityMatcher,
    FieldMatcher,
    Identity,
    IdentityMatcher,
    field_keys,
    resource_of,
    subscribed,
    subscription_to,
)
from .fields import FieldDecl, Limits, check_value
from .hookspecs import hookimpl
from .lookup import Lookup, canonical
from .matcher import Found, Key, Matcher, Query
from .normalize import MAX_IDENTITY_BYTES
from .normalize import email as normalize_email
from .normalize import phone as normalize_phone
from .normalize import text as normalize_text
from .plugins import ENTRY_POINT_GROUP, Registry, get_plugin_manager
from .profile_data import ProfileWrite, SubscriptionWrite
from .worker import RunLimits, Worker

API_VERSION = "1.1"

__all__ = [
    # the version of this API
    "API_VERSION",
    # hooks
    "ENTRY_POINT_GROUP", "hookimpl",
    # the matcher and its value types
    "Found", "Key", "Matcher", "Query",
    # the families the built-in modes are made of
    "EMAIL", "PHONE", "EitherIdentityMatcher", "FieldMatcher", "Identity", "IdentityMatcher",
    "field_keys", "resource_of", "subscribed", "subscription_to",
    # reading the store
    "Lookup", "canonical",
    # the declarations a matcher reads
    "Database", "FieldDecl", "Limits", "Resource",
    # what a new profile holds
    "ProfileWrite", "SubscriptionWrite",
    # the errors a matcher raises (each is the result's error code)
    "BadInput", "Conflict", "Forbidden", "NotFound",
    # normalising match values and checking field values
    "MAX_IDENTITY_BYTES", "check_value", "normalize_email", "normalize_phone", "normalize_text",
    # what dbimport_events_committed receives
    "PROFILE_CREATED", "PROFILE_UPDATED", "SUBSCRIBED", "SUBSCRIPTION_STATUS_CHANGED", "TriggerEvent",
    # testing a plugin: register it as the worker does, run a worker with it
    "Registry", "RunLimits", "Settings", "Worker", "get_plugin_manager", "load_settings",
]
