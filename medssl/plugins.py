"""The plugin manager and the component registry built from it.

A fresh :class:`pluggy.PluginManager` is built per call to :func:`get_plugin_manager`
(no global state at import time), so tests stay isolated. Third-party plugins load
from the ``medssl`` entry-point group; the built-ins register through the same hooks.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as importlib_metadata
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from medssl import __version__, hookspecs

log = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_PLUGINS",
    "KINDS",
    "Component",
    "LoadReport",
    "PluginError",
    "Provider",
    "Registry",
    "UnknownComponentError",
    "get_plugin_manager",
    "load_registry",
]

ENTRY_POINT_GROUP = "medssl"
BUILTIN_PROVIDER = "medssl"
#: Modules of medssl's own hook implementations, loaded by name like any plugin (as llm's
#: ``DEFAULT_PLUGINS``): the plugin machinery depends on no component, the components
#: depend on it. ``medssl.builtins`` defers its heavy imports to the hooks, so a manager
#: built only for ``medssl_register_commands`` (``medssl --help``) stays light.
BUILTIN_PLUGINS: tuple[str, ...] = ("medssl.builtins",)

#: Registry kinds, keyed by the recipe word for one component of that kind.
KINDS: dict[str, str] = {
    "backbone": "medssl_register_backbones",
    "objective": "medssl_register_objectives",
    "augmentation": "medssl_register_augmentations",
    "dataset": "medssl_register_datasets",
    "evaluator": "medssl_register_evaluators",
    "exporter": "medssl_register_exporters",
}


class PluginError(Exception):
    """A plugin could not be loaded or registered a component badly."""


class UnknownComponentError(PluginError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Provider:
    """Where a plugin comes from: its distribution name and version."""

    name: str
    version: str | None = None


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    provider: Provider

    @property
    def options_model(self) -> Any:
        """The pydantic model of the factory's options, when it declares one."""
        return getattr(self.factory, "Options", None)


@dataclass
class LoadReport:
    """What happened while loading entry points (shown by ``medssl plugins``)."""

    loaded: dict[str, Provider] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # distribution -> reason
    blocked: list[str] = field(default_factory=list)


def _disabled_names() -> set[str]:
    raw = os.environ.get("MEDSSL_DISABLE_PLUGINS", "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _autoload_disabled() -> bool:
    return os.environ.get("MEDSSL_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower() in {
        "1",
        "true",
        "yes",
    }


def get_plugin_manager(extra_plugins: Iterable[Any] = ()) -> pluggy.PluginManager:
    """Build a fresh plugin manager: entry points first, then the built-ins.

    ``extra_plugins`` (objects or modules with hook implementations) are registered
    last, under their ``__name__`` or class name; tests use this for one-off plugins.
    """
    pm = pluggy.PluginManager("medssl")
    pm.add_hookspecs(hookspecs)
    report = LoadReport()
    pm.medssl_load_report = report  # type: ignore[attr-defined]
    pm.medssl_providers = {}  # type: ignore[attr-defined]
    if not _autoload_disabled():
        _load_entry_points(pm, report)
    for module_name in BUILTIN_PLUGINS:
        # The first is registered as "medssl": `pm.get_plugin("medssl")` finds the built-ins.
        name = BUILTIN_PROVIDER if module_name == BUILTIN_PLUGINS[0] else module_name
        pm.register(importlib.import_module(module_name), name=name)
        pm.medssl_providers[name] = Provider(BUILTIN_PROVIDER, __version__)  # type: ignore[attr-defined]
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        pm.register(plugin, name=name)
        pm.medssl_providers[name] = Provider(name)  # type: ignore[attr-defined]
    _check_pending(pm)
    return pm


def _check_pending(pm: pluggy.PluginManager) -> None:
    """A hook implementation no spec knows (``medssl_register_dataset``, a typo) is an error.

    Without this pluggy keeps the implementation silently and never calls it, so a plugin
    whose components never appear would give no clue why.
    """
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        providers: dict[str, Provider] = getattr(pm, "medssl_providers", {})
        plugin_name = pm.get_name(exc.plugin) or "?"
        provider = providers.get(plugin_name, Provider(plugin_name))
        pending = sorted(
            name
            for name in dir(exc.plugin)
            if name.startswith("medssl_")
            and getattr(getattr(pm.hook, name, None), "spec", True) is None
        )
        known = sorted([*KINDS.values(), "medssl_register_commands"])
        hints = [
            f"{name} (did you mean {close[0]}?)" if close else name
            for name in pending
            for close in [difflib.get_close_matches(name, known, n=1, cutoff=0.8)]
        ]
        raise PluginError(
            f"plugin {provider.name!r} implements unknown hook(s): {', '.join(hints) or '?'}; "
            f"medssl's hooks are {', '.join(known)}"
        ) from None


def _load_entry_points(pm: pluggy.PluginManager, report: LoadReport) -> None:
    disabled = _disabled_names()
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else ep.name
        version = dist.version if dist is not None else None
        if ep.name in disabled or dist_name in disabled:
            report.blocked.append(dist_name)
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not take medssl down with it
            reason = f"{type(exc).__name__}: {exc}"
            report.failed[dist_name] = reason
            log.warning(
                "plugin %r (entry point %r = %s) failed to import and was skipped: %s",
                dist_name,
                ep.name,
                ep.value,
                reason,
            )
            continue
        pm.register(plugin, name=ep.name)
        provider = Provider(dist_name, version)
        pm.medssl_providers[ep.name] = provider  # type: ignore[attr-defined]
        report.loaded[ep.name] = provider


class Registry:
    """Every component registered through the hooks, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager, kinds: Iterable[str] | None = None) -> None:
        """Collect every kind, or only ``kinds`` (``medssl validate --data-only`` asks for
        datasets alone, so backbones and their imports of torch and timm never load)."""
        self.pm = pm
        self.load_report: LoadReport = getattr(pm, "medssl_load_report", LoadReport())
        providers: dict[str, Provider] = getattr(pm, "medssl_providers", {})
        wanted = set(KINDS) if kinds is None else set(kinds)
        unknown = wanted - set(KINDS)
        if unknown:
            raise KeyError(f"unknown component kinds {sorted(unknown)}; kinds are {sorted(KINDS)}")
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        for kind, hook_name in KINDS.items():
            if kind not in wanted:
                continue
            hook = getattr(pm.hook, hook_name)
            # Call each implementation on its own so every registration knows its plugin.
            for impl in reversed(hook.get_hookimpls()):
                provider = providers.get(impl.plugin_name, Provider(impl.plugin_name))
                impl.function(register=self._register_callable(kind, provider))

    def _register_callable(self, kind: str, provider: Provider) -> hookspecs.Register:
        def register(name: str, factory: Callable[..., Any]) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {provider.name!r} registered a {kind} without a name")
            if not callable(factory):
                raise PluginError(
                    f"plugin {provider.name!r} registered {kind} {name!r} with a factory that "
                    f"is not callable: {factory!r}"
                )
            existing = self._components[kind].get(name)
            if existing is not None:
                raise PluginError(
                    f"{kind} {name!r} is registered twice: by plugin {existing.provider.name!r} "
                    f"and by plugin {provider.name!r}; uninstall one or block it with "
                    f"MEDSSL_DISABLE_PLUGINS"
                )
            self._components[kind][name] = Component(kind, name, factory, provider)

        return register

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def components(self, kind: str) -> list[Component]:
        return [self._components[kind][name] for name in self.names(kind)]

    def get(self, kind: str, name: str) -> Component:
        if kind not in self._components:
            raise KeyError(f"unknown component kind {kind!r}; kinds are {sorted(KINDS)}")
        try:
            return self._components[kind][name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(kind, name)) from None

    def unknown_message(self, kind: str, name: str) -> str:
        message = f"unknown {kind} {name!r}"
        close = difflib.get_close_matches(str(name), self.names(kind), n=1, cutoff=0.6)
        if close:
            message += f" — did you mean {close[0]!r}?"
        else:
            message += f"; registered: {', '.join(self.names(kind)) or 'none'}"
        if self.load_report.failed:
            failed = ", ".join(sorted(self.load_report.failed))
            message += f" (plugins that failed to import: {failed})"
        return message


def load_registry(
    extra_plugins: Iterable[Any] = (), kinds: Iterable[str] | None = None
) -> Registry:
    """A fresh plugin manager and the registry it builds (of every kind, or ``kinds``)."""
    return Registry(get_plugin_manager(extra_plugins), kinds)
