"""The pluggy markers of dbimport's hooks: `hookspec` for the specs, `hookimpl` for plugins."""
from __future__ import annotations

import pluggy

PROJECT_NAME = "dbimport"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
