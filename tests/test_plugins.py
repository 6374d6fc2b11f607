"""The plugin contract: entry points, a local plugins directory, and name clashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from conceptlib.errors import PluginError, UnknownSourceError
from conceptlib.plugins import PluginManager

LOCAL_SOURCE = '''
from conceptlib.hookspecs import hookimpl
from conceptlib_scenes.source import ScenesSource


class Mine(ScenesSource):
    name = "{name}"


@hookimpl
def conceptlib_sources():
    return [Mine()]
'''


def write_plugin(directory: Path, stem: str, source_name: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{stem}.py").write_text(LOCAL_SOURCE.format(name=source_name))


def test_first_party_plugins_register_through_entry_points():
    manager = PluginManager(plugins_dir=None)
    assert "scenes" in [r.name for r in manager.registrations("source")]
    assert "small" in [r.name for r in manager.registrations("architecture")]
    origins = dict(manager.plugins())
    assert "entry point conceptlib_scenes" in origins["scenes"]


def test_a_local_plugins_directory_adds_sources(tmp_path):
    write_plugin(tmp_path / "plugins", "mine", "mysource")
    manager = PluginManager(plugins_dir=tmp_path / "plugins")
    assert manager.source("mysource").name == "mysource"
    registration = next(r for r in manager.registrations("source") if r.name == "mysource")
    assert registration.plugin == "mine" and registration.origin.endswith("mine.py")


def test_the_plugins_directory_comes_from_the_environment(tmp_path, monkeypatch):
    write_plugin(tmp_path / "plugins", "envplugin", "fromenv")
    monkeypatch.setenv("CONCEPTLIB_PLUGINS_DIR", str(tmp_path / "plugins"))
    assert PluginManager().source("fromenv").name == "fromenv"


def test_two_plugins_registering_one_name_is_an_error_naming_both(tmp_path):
    write_plugin(tmp_path / "plugins", "first", "clash")
    write_plugin(tmp_path / "plugins", "second", "clash")
    manager = PluginManager(plugins_dir=tmp_path / "plugins")
    with pytest.raises(PluginError) as caught:
        manager.registrations("source")
    message = str(caught.value)
    assert "'first'" in message and "'second'" in message and "clash" in message


def test_a_local_plugin_clashing_with_a_first_party_name_is_an_error(tmp_path):
    write_plugin(tmp_path / "plugins", "shadow", "scenes")
    with pytest.raises(PluginError, match="conceptlib_scenes"):
        PluginManager(plugins_dir=tmp_path / "plugins").source("scenes")


def test_a_broken_plugin_file_is_a_clear_error(tmp_path):
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(PluginError, match=r"broken\.py failed to import: boom"):
        PluginManager(plugins_dir=directory)


def test_a_missing_plugins_directory_is_a_clear_error(tmp_path):
    with pytest.raises(PluginError, match="does not exist"):
        PluginManager(plugins_dir=tmp_path / "absent")


def test_an_unknown_source_lists_the_known_ones():
    with pytest.raises(UnknownSourceError, match="scenes"):
        PluginManager().source("mujocoo")


def test_the_cli_names_both_plugins_in_a_one_line_error(run, tmp_path):
    from tests.conftest import assert_one_line_error

    write_plugin(tmp_path / "plugins", "first", "clash")
    write_plugin(tmp_path / "plugins", "second", "clash")
    result = run("--plugins-dir", str(tmp_path / "plugins"), "sources")
    assert_one_line_error(result, "first", "second")


def test_the_cli_lists_a_local_plugin_source(run, tmp_path):
    write_plugin(tmp_path / "plugins", "mine", "mysource")
    result = run("--plugins-dir", str(tmp_path / "plugins"), "sources")
    assert result.exit_code == 0, result.output
    assert "mysource" in result.output
