"""The plugin manager: first-party and third-party plugins through the same doors.

Plugins come from the ``conceptlib`` entry-point group and from single ``.py`` files in a plugins
directory the user names. Nothing else is imported, so a registry never runs code it was not told
to. Every source and architecture name must be registered once: a clash names both plugins.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from conceptlib import hookspecs
from conceptlib.errors import PluginError, UnknownSourceError

ENTRY_POINT_GROUP = "conceptlib"
PLUGINS_DIR_ENV = "CONCEPTLIB_PLUGINS_DIR"


@dataclass(frozen=True)
class Registration:
    """One named thing a plugin registered, and where that plugin came from."""

    kind: str
    name: str
    plugin: str
    origin: str
    item: Any


class PluginManager:
    """Loads plugins once and answers which sources and architectures exist."""

    def __init__(self, plugins_dir: str | Path | None = None, entry_points_enabled: bool = True) -> None:
        self._pm = pluggy.PluginManager("conceptlib")
        self._pm.add_hookspecs(hookspecs)
        self._origins: dict[str, str] = {}
        if entry_points_enabled:
            self._load_entry_points()
        directory = plugins_dir if plugins_dir is not None else os.environ.get(PLUGINS_DIR_ENV)
        if directory:
            self._load_directory(Path(directory))

    def register(self, plugin: ModuleType | object, name: str, origin: str) -> None:
        """Register a plugin object (a module or any object with ``@hookimpl`` methods)."""
        if self._pm.get_plugin(name) is not None:
            raise PluginError(f"two plugins are named {name!r}: {self._origins[name]} and {origin}")
        try:
            self._pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} ({origin}) is invalid: {exc}") from None
        self._origins[name] = origin
        self.__dict__.pop("_registrations", None)

    def _load_entry_points(self) -> None:
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                module = entry.load()
            except Exception as exc:  # a broken third-party plugin must not take the CLI down silently
                raise PluginError(
                    f"plugin {entry.name!r} (entry point {entry.value}) failed to import: {exc}"
                ) from None
            self.register(module, entry.name, f"entry point {entry.value}")

    def _load_directory(self, directory: Path) -> None:
        if not directory.is_dir():
            raise PluginError(f"plugins directory {directory} does not exist; create it or unset {PLUGINS_DIR_ENV}")
        for path in sorted(directory.glob("*.py")):
            module_name = f"conceptlib_local_{path.stem}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise PluginError(f"cannot load plugin file {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                sys.modules.pop(module_name, None)
                raise PluginError(f"plugin file {path} failed to import: {exc}") from None
            self.register(module, path.stem, str(path))

    @cached_property
    def _registrations(self) -> dict[str, dict[str, Registration]]:
        found: dict[str, dict[str, Registration]] = {}
        for kind, hook in (
            ("source", self._pm.hook.conceptlib_sources),
            ("architecture", self._pm.hook.conceptlib_architectures),
        ):
            table: dict[str, Registration] = {}
            for impl in hook.get_hookimpls():
                plugin_name = self._pm.get_name(impl.plugin) or "?"
                for item in impl.function() or []:
                    name = item.name
                    here = Registration(kind, name, plugin_name, self._origins.get(plugin_name, "?"), item)
                    if name in table:
                        first = table[name]
                        raise PluginError(
                            f"{kind} {name!r} is registered by two plugins: {first.plugin!r} "
                            f"({first.origin}) and {plugin_name!r} ({here.origin}); uninstall or rename one"
                        )
                    table[name] = here
            found[kind] = dict(sorted(table.items()))
        return found

    def registrations(self, kind: str) -> list[Registration]:
        """Every registered ``kind`` ('source' or 'architecture'), sorted by name."""
        return list(self._registrations[kind].values())

    def source(self, name: str) -> Any:
        return self._lookup("source", name)

    def architecture(self, name: str) -> Any:
        return self._lookup("architecture", name)

    def _lookup(self, kind: str, name: str) -> Any:
        table = self._registrations[kind]
        if name not in table:
            known = ", ".join(table) or "none installed"
            raise UnknownSourceError(f"unknown {kind} {name!r} (known: {known}); see 'concept sources'")
        return table[name].item

    def plugins(self) -> list[tuple[str, str]]:
        """(name, origin) of every loaded plugin."""
        return sorted(self._origins.items())
