"""Shared fixtures: a CLI runner bound to a per-test registry, and tiny training settings."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from conceptlib.cli import cli

torch.set_num_threads(1)

TINY_SOURCE = ["--source", "scenes", "--param", "n=256", "--param", "image_size=16"]
TINY_TRAINING = [
    "--arch-config", "channels=[8,8,8]", "--arch-config", "embed=16",
    "--iterations", "3", "--batch-size", "8", "--steps", "2", "--device", "cpu",
]
TINY_SAMPLING = ["--levels", "3", "--steps", "2", "--device", "cpu"]

Run = Callable[..., Result]
POSTGRES_ENV = "CONCEPTLIB_TEST_POSTGRES"
SHIPPED_REGISTRY = Path(__file__).resolve().parent.parent / "registry.db"


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.fixture(scope="session", autouse=True)
def shipped_registry_is_never_written() -> Iterator[None]:
    """The repo's registry.db ships trained concepts: the suite must leave it byte for byte as it was."""
    before = _digest(SHIPPED_REGISTRY)
    yield
    assert _digest(SHIPPED_REGISTRY) == before, "a test wrote to the shipped registry.db; use a tmp_path registry"


@pytest.fixture
def registry_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture
def run(registry_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """Invoke ``concept --registry <tmp> ARGS...``; never touches the repo's registry.db."""
    monkeypatch.delenv("CONCEPTLIB_REGISTRY", raising=False)
    monkeypatch.delenv("CONCEPTLIB_PLUGINS_DIR", raising=False)
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, ["--registry", str(registry_path), *args], catch_exceptions=False)

    return invoke


@pytest.fixture
def add_tiny(run: Run) -> Callable[..., Result]:
    """Train a concept for a few tiny iterations (the real CD loop, only brief)."""

    def add(name: str, *extra: str) -> Result:
        result = run("add", name, *TINY_SOURCE, *TINY_TRAINING, *extra)
        assert result.exit_code == 0, result.output
        return result

    return add


def assert_one_line_error(result: Result, *fragments: str, code: int = 2) -> None:
    """Bad input: the given exit code, an ``error:`` line naming the problem, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], result.output


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty registry location on each backend: a SQLite file, and a fresh PostgreSQL database when
    ``$CONCEPTLIB_TEST_POSTGRES`` names a server (``.ci/run`` starts one) -- skipped otherwise."""
    if request.param == "sqlite":
        yield str(tmp_path / "registry.db")
        return
    server = os.environ.get(POSTGRES_ENV)
    if not server:
        pytest.skip(f"PostgreSQL not tested: set {POSTGRES_ENV} to a server URL (.ci/run does)")
    name = f"conceptlib_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()
