"""Security: weights and metadata never run code, plugins come only from where the user says, and a
registry URL's password is never printed."""

from __future__ import annotations

import ast
import pickle
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from conceptlib.checkpoints import Checkpoint
from conceptlib.cli import cli
from conceptlib.errors import UnknownSourceError
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry
from tests.conftest import TINY_SAMPLING, assert_one_line_error
from tests.reliability import TINY_CD
from tests.test_resume import ITERATIONS, train

ROOT = Path(__file__).parent.parent
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "copyreg"}
UNSAFE_CALLS = {("torch", "load"), ("torch", "save"), ("jit", "load"), ("serialization", "load")}


def sources() -> Iterator[Path]:
    for folder in ("conceptlib", "plugins"):
        yield from (ROOT / folder).rglob("*.py")


def unsafe(node: ast.AST) -> str | None:
    """What is unsafe about one syntax node: an unpickling module, torch.load/save, or allow_pickle."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        return f"import {', '.join(names)}" if names else None
    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
        return f"from {node.module} import"
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name | ast.Attribute):
        owner = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
        return f"{owner}.{node.attr}" if (owner, node.attr) in UNSAFE_CALLS else None
    if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
        return None if isinstance(node.value, ast.Constant) and node.value.value is False else "allow_pickle"
    return None


def test_no_code_path_imports_pickle_or_calls_torch_load():
    found = [f"{path}:{getattr(node, 'lineno', '?')}: {reason}"
             for path in sources() for node in ast.walk(ast.parse(path.read_text(), str(path)))
             if (reason := unsafe(node))]
    assert found == []


@pytest.fixture
def unpickling() -> Iterator[list[str]]:
    """Every attempt to unpickle or torch.load while the test body runs (each one also fails)."""
    seen: list[str] = []

    def refuse(name: str):
        def call(*args: object, **kwargs: object) -> None:
            seen.append(name)
            raise AssertionError(f"{name} was called")

        return call

    def audit(event: str, args: tuple) -> None:
        if event == "pickle.find_class" and watching:
            seen.append(f"unpickled {args}")

    class Unpickler(pickle.Unpickler):  # a class still, so that libraries may subclass it on import
        def __init__(self, *args: object, **kwargs: object) -> None:
            refuse("pickle.Unpickler")()

    watching = True
    sys.addaudithook(audit)  # catches unpickling through any alias, including C code
    with pytest.MonkeyPatch.context() as patch:
        for owner, name in [(pickle, "load"), (pickle, "loads"), (torch, "load"), (torch.serialization, "load")]:
            patch.setattr(owner, name, refuse(f"{owner.__name__}.{name}"))
        patch.setattr(pickle, "Unpickler", Unpickler)
        yield seen
    watching = False


def test_loading_composing_exporting_importing_and_resuming_never_unpickle(run, registry_path, tmp_path,
                                                                          unpickling):
    result = run("add", "position", *TINY_CD)
    assert result.exit_code == 0, result.output
    assert run("add", "color", "--with", "position", *TINY_CD, "--checkpoint-every", "1").exit_code == 0
    for args in (["list"], ["show", "color"], ["history", "color"],
                 ["compose", "position=(0.5,0.5) & color=red", "-n", "1", "-o", str(tmp_path / "g.png"),
                  *TINY_SAMPLING],
                 ["export", "color", "-o", str(tmp_path / "c.cpt")],
                 ["--registry", str(tmp_path / "other.db"), "import", str(tmp_path / "c.cpt")]):
        result = run(*args)
        assert result.exit_code == 0, result.output
    registry = Registry.open(str(registry_path))
    for concept in registry.concepts():
        for version in registry.history(concept.name):
            registry.load_weights(version)
    registry.close()
    saved = tmp_path / "checkpoint"
    plugins = PluginManager()
    source = plugins.source("scenes")
    dataset = source.load(source.resolve_params({"n": 32, "image_size": 16}))
    with pytest.raises(RuntimeError, match="on purpose"):
        train(plugins, dataset, "cd", Checkpoint(saved, every=2, total=ITERATIONS), stop_after=3)
    train(plugins, dataset, "cd", Checkpoint(saved, resume=True, total=ITERATIONS))
    assert unpickling == []


def test_plugins_come_only_from_entry_points_and_the_directory_the_user_names(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    planted = f"open({str(marker)!r}, 'w').close()\n"
    for name in ("conceptlib_evil.py", "evil.py", "sitecustomize_evil.py"):
        (tmp_path / name).write_text(planted)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CONCEPTLIB_PLUGINS_DIR", raising=False)
    manager = PluginManager()
    assert all(origin.startswith("entry point ") for _, origin in manager.plugins())
    with pytest.raises(UnknownSourceError):
        manager.architecture("evil")
    assert not marker.exists()
    named = tmp_path / "mine"
    named.mkdir()
    (named / "mine.py").write_text(planted)
    assert dict(PluginManager(plugins_dir=named).plugins())["mine"] == str(named / "mine.py")
    assert marker.exists()


def test_a_version_naming_an_architecture_nobody_installed_imports_nothing(run, registry_path, tmp_path):
    assert run("add", "shape", *TINY_CD).exit_code == 0
    with sqlite3.connect(registry_path) as db:
        db.execute("UPDATE versions SET architecture = 'os.system'")
    result = run("compose", "shape=circle", "-o", str(tmp_path / "g.png"), *TINY_SAMPLING)
    assert_one_line_error(result, "unknown architecture 'os.system'")
    assert "os.system" not in sys.modules


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg://alice:s3cr3t-pw@127.0.0.1:1/registry", "nosuchdb://alice:s3cr3t-pw@host/registry",
     "postgresql+psycopg://alice:s3cr3t-pw@[bad-host/registry", "postgresql://alice:s3cr3t-pw@host:port/registry"],
)
def test_a_registry_url_with_a_password_is_never_printed(url, monkeypatch):
    for args in (["--registry", url, "list"], ["--registry", url, "show", "shape"]):
        result = CliRunner().invoke(cli, args)
        assert_one_line_error(result)
        assert "s3cr3t-pw" not in result.output
    monkeypatch.setenv("CONCEPTLIB_REGISTRY", url)
    result = CliRunner().invoke(cli, ["history", "shape"])
    assert_one_line_error(result)
    assert "s3cr3t-pw" not in result.output


def test_no_command_prints_the_password_of_a_working_registry(registry_url, tmp_path):
    runner = CliRunner()
    outputs = []
    for args in (["add", "shape", *TINY_CD], ["list"], ["show", "shape", "--json"], ["history", "shape"],
                 ["alias", "shape", "stable"], ["export", "shape", "-o", str(tmp_path / "s.cpt")],
                 ["import", str(tmp_path / "s.cpt")], ["rollback", "shape"]):
        result = runner.invoke(cli, ["--registry", registry_url, *args])
        outputs.append(result.output)
    assert outputs[-1].startswith("error:")  # one version only: nothing to roll back to, said in one line
    password = make_url(registry_url).password if "://" in registry_url else None
    if password is not None:
        assert password not in "".join(outputs)
        wrong = make_url(registry_url).set(password="not-the-password").render_as_string(hide_password=False)
        result = runner.invoke(cli, ["--registry", wrong, "list"])
        assert_one_line_error(result, "password authentication failed")
        assert "not-the-password" not in result.output
