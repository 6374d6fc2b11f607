"""The plugin manager: first-party and third-party plugins through the same doors.

Plugins come from the ``conceptlib`` entry-point group of installed distributions and from single
``.py`` files in a plugins directory the user names. Nothing else is imported, so a registry never runs
code it was not told to. The current directory is not an installation: ``python -m conceptlib`` (and so
``torchrun -m conceptlib``) puts it first on ``sys.path``, where a planted ``*.dist-info`` would otherwise
declare an entry point, so distributions found there are skipped. Every source and architecture name must
be registered once: a clash names both plugins. A plugin that fails, exits or answers a hook with anything
but a list of sources or architectures is named in one line.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import EntryPoint, distributions
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from conceptlib import hookspecs
from conceptlib.architectures import Architecture
from conceptlib.errors import ConceptError, PluginError, UnknownSourceError
from conceptlib.sources import Source

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
        for entry in installed_entry_points():
            origin = f"entry point {entry.value}"
            module = _guarded(lambda entry=entry: entry.load(), f"plugin {entry.name!r} ({origin}) failed to import")
            self.register(module, entry.name, origin)

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
                _guarded(lambda spec=spec, module=module: spec.loader.exec_module(module),
                         f"plugin file {path} failed to import")
            except PluginError:
                sys.modules.pop(module_name, None)
                raise
            self.register(module, path.stem, str(path))

    @cached_property
    def _registrations(self) -> dict[str, dict[str, Registration]]:
        found: dict[str, dict[str, Registration]] = {}
        for kind, hook, expected in (
            ("source", self._pm.hook.conceptlib_sources, Source),
            ("architecture", self._pm.hook.conceptlib_architectures, Architecture),
        ):
            table: dict[str, Registration] = {}
            for impl in hook.get_hookimpls():
                plugin_name = self._pm.get_name(impl.plugin) or "?"
                origin = self._origins.get(plugin_name, "?")
                for item in _answers(impl.function, expected, f"plugin {plugin_name!r} ({origin}): {hook.name}"):
                    name = item.name
                    here = Registration(kind, name, plugin_name, origin, item)
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


def installed_entry_points() -> list[EntryPoint]:
    """The ``conceptlib`` entry points of installed distributions, one distribution per name, first on
    ``sys.path`` first (as ``importlib.metadata.entry_points`` orders them), none found in the current
    directory or through a relative ``sys.path`` entry."""
    here = os.path.realpath(os.getcwd())
    trusted = [p for p in sys.path if p and os.path.isabs(p) and os.path.realpath(p) != here]
    seen: set[str] = set()
    found = []
    for distribution in distributions(path=trusted):
        name = getattr(distribution, "_normalized_name", None) or str(distribution.metadata["Name"]).lower()
        if name in seen:
            continue
        seen.add(name)
        found += [entry for entry in distribution.entry_points if entry.group == ENTRY_POINT_GROUP]
    return found


def _guarded(call: Callable[[], Any], what: str) -> Any:
    """``call()``, with any failure of plugin code, ``sys.exit`` included, as one :class:`PluginError` line."""
    try:
        return call()
    except ConceptError:
        raise
    except SystemExit as exc:
        raise PluginError(f"{what}: it called sys.exit({exc.code!r})") from None
    except Exception as exc:
        summary = (str(exc).splitlines() or [""])[0][:200]
        shown = f"{summary} ({type(exc).__name__})" if summary else type(exc).__name__
        raise PluginError(f"{what}: {shown}") from None


def _answers(hook: Callable[[], Any], expected: type, what: str) -> Iterator[Any]:
    """What one plugin's hook returned, checked: a list (or None) of ``expected`` objects with a text name."""
    answer = _guarded(hook, f"{what} failed")
    if answer is None:
        return
    if not isinstance(answer, (list, tuple)):
        raise PluginError(f"{what} returned {type(answer).__name__}, not a list of {expected.__name__} objects")
    for item in answer:
        if not isinstance(item, expected) or not isinstance(getattr(item, "name", None), str):
            raise PluginError(f"{what} returned a {type(item).__name__}, not a {expected.__name__} with a name")
        yield item
