"""The plugin host: discovers plugins with pluggy, dispatches modes with a dict."""
from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import jsonschema
import pluggy

from . import hookspecs
from .errors import PluginError
from .matcher import Matcher

ENTRY_POINT_GROUP = "dbimport"
BUILTIN_PLUGINS = tuple(
    f"dbimport.matchers.{name}"
    for name in (
        "email", "email_profile", "email_sub", "phone", "phone_sub", "profile_id",
        "push_sub", "custom", "custom_sub", "email_phone", "email_phone_sub",
    )
)
_MODE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def get_plugin_manager(
    *, entry_points: bool = True, extra_plugins: Iterable[Any] = ()
) -> pluggy.PluginManager:
    """Specs, built-ins, then third parties' entry points; misspelled hooks fail here."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    # Each built-in mode is a matcher instance, a plugin of its own: the module's
    # `plugin`, as an entry point `dbimport.matchers.email:plugin` would load it.
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name).plugin, name=module_name)
    if entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra_plugins:
        pm.register(plugin, name=_name_of(plugin))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(
            f"plugin {name} implements a hook dbimport does not define: {exc}; "
            "check the hook's name against dbimport.hookspecs"
        ) from None
    return pm


def _name_of(plugin: Any) -> str:
    """A module's name, else the object's class path (with its id if not unique)."""
    name = getattr(plugin, "__name__", None)
    if isinstance(name, str):
        return name
    return f"{type(plugin).__module__}.{type(plugin).__qualname__}@{id(plugin):x}"


@dataclass(frozen=True)
class Registration:
    """A mode, the matcher that serves it, and where it came from."""

    matcher: Matcher
    plugin: str
    package: str
    version: str


class Registry(Mapping[str, Matcher]):
    """`{mode: matcher}`, built once from every plugin's registration hook."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        distributions = _distributions(pm)
        for name in BUILTIN_PLUGINS:
            distributions[name] = ("dbimport", _version("dbimport"))
        self._by_mode: dict[str, Registration] = {}
        for impl in pm.hook.dbimport_register_matchers.get_hookimpls():
            # Neither built in nor from an entry point: registered by the embedding code.
            package, version = distributions.get(impl.plugin_name, ("(in-process)", "-"))
            matchers = cast(Iterable[Any], impl.function() or ())
            for matcher in matchers:
                self._add(Registration(matcher, impl.plugin_name, package, version))

    def _add(self, reg: Registration) -> None:
        matcher = reg.matcher
        if not isinstance(matcher, Matcher):
            raise PluginError(
                f"plugin {reg.plugin} registered {matcher!r}, which is not a dbimport.matcher.Matcher"
            )
        name = getattr(matcher, "name", None)
        if not isinstance(name, str) or not _MODE_NAME.fullmatch(name):
            raise PluginError(
                f"plugin {reg.plugin} registered a matcher whose name {name!r} is not a "
                "lower-case identifier"
            )
        cls = type(matcher)
        if cls.find is Matcher.find and cls.find_many is Matcher.find_many:  # each defaults to the other
            raise PluginError(
                f"plugin {reg.plugin} registered mode {name!r}, whose matcher overrides neither find "
                "nor find_many; write one of them (see docs/writing-a-matcher.md)"
            )
        taken = self._by_mode.get(name)
        if taken is not None:
            raise PluginError(
                f"matching mode {name!r} is registered twice: by plugin {taken.plugin} "
                f"({taken.package} {taken.version}) and by plugin {reg.plugin} "
                f"({reg.package} {reg.version}); uninstall one of them or rename its mode"
            )
        _check_schema_fragment(reg)
        self._by_mode[name] = reg

    def __getitem__(self, mode: str) -> Matcher:
        return self._by_mode[mode].matcher

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_mode)

    def __len__(self) -> int:
        return len(self._by_mode)

    def registrations(self) -> list[Registration]:
        return [self._by_mode[mode] for mode in sorted(self._by_mode)]


def _check_schema_fragment(reg: Registration) -> None:
    schema = reg.matcher.schema
    if not isinstance(schema, Mapping):
        raise PluginError(f"mode {reg.matcher.name!r} ({reg.plugin}): schema must be a mapping")
    try:
        jsonschema.Draft7Validator.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        raise PluginError(
            f"mode {reg.matcher.name!r} ({reg.plugin}): schema is not valid JSON Schema: {exc.message}"
        ) from None


def _distributions(pm: pluggy.PluginManager) -> dict[str, tuple[str, str]]:
    found = {}
    for plugin, dist in pm.list_plugin_distinfo():
        name = pm.get_name(plugin)
        if name is not None:
            found[name] = (dist.metadata["name"], dist.version)
    return found


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_registry(**kwargs: Any) -> Registry:
    return Registry(get_plugin_manager(**kwargs))
