"""``concept list`` reads a SQLite registry with the stdlib alone (issue 6): what it prints, and what it leaves
to the ``Registry``. Speed itself is measured in benchmarks/cold_start.py, never asserted here."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from conceptlib import listing
from conceptlib.registry import NewVersion, Registry
from conceptlib.registry.engine import HEAD_REVISION, resolve_url, sqlite_path
from conceptlib.schema import Categorical, Continuous
from tests.conftest import assert_one_line_error

SCHEMAS = {"color": Categorical(("red", "green", "blue")), "position": Continuous(("x", "y"), spatial=True),
           "shape": Categorical(("circle", "square")), "size": Continuous(("size",), 0.05, 0.3)}


def add(registry: Registry, name: str, seed: int) -> None:
    registry.add_version(NewVersion(
        concept=name, schema=SCHEMAS[name], architecture="small", architecture_config={"channels": [8]},
        source="scenes", source_params={"n": 10}, attribute=name, dataset_hash="d" * 64,
        hyperparameters={"lr": 1e-3}, seed=seed, metrics={"loss": 1.0}, description=f"the {name} — of a scene",
    ), {"w": np.full((2, 3), seed, dtype=np.float32)})


@pytest.fixture
def several(registry_path: Path) -> Path:
    """color 1-3 rolled back to 2 with @champion on 1; position 1-2; shape 1 with @stable and @best; size 1."""
    registry = Registry.open(str(registry_path), create=True)
    for name, versions in (("shape", 1), ("color", 3), ("size", 1), ("position", 2)):
        for seed in range(versions):
            add(registry, name, seed)
    registry.set_alias("color", "champion", 1)
    registry.set_alias("shape", "stable")
    registry.set_alias("shape", "best")
    registry.rollback("color")
    registry.close()
    return registry_path


def through_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on every ``list`` goes through the ``Registry``, as before the stdlib reader."""
    monkeypatch.setattr(listing, "read_concepts", lambda location: None)


def execute(path: Path, sql: str) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(sql)


def test_the_reader_returns_what_the_registry_returns(several):
    registry = Registry.open(str(several))
    assert listing.read_concepts(str(several)) == [c.to_json() for c in registry.concepts()]
    registry.close()


@pytest.mark.parametrize("options", [[], ["--json"]], ids=["table", "json"])
def test_list_prints_the_same_bytes_as_through_the_registry(run, several, monkeypatch, options):
    assert listing.read_concepts(str(several)) is not None
    fast = run("list", *options)
    through_the_registry(monkeypatch)
    slow = run("list", *options)
    assert fast.exit_code == slow.exit_code == 0
    assert fast.output == slow.output
    assert "champion" in fast.output


@pytest.mark.parametrize("options", [[], ["--json"]], ids=["table", "json"])
def test_an_empty_registry_lists_the_same_on_either_path(run, registry_path, monkeypatch, options):
    Registry.open(str(registry_path), create=True).close()
    fast = run("list", *options)
    through_the_registry(monkeypatch)
    assert fast.output == run("list", *options).output
    assert fast.output.strip() in ("[]", "no concepts yet; train one with 'concept add NAME --source scenes'")


@pytest.mark.parametrize("options", [[], ["--json"]], ids=["table", "json"])
def test_list_imports_neither_sqlalchemy_nor_numpy_nor_torch(several, options, monkeypatch):
    monkeypatch.delenv("CONCEPTLIB_REGISTRY", raising=False)
    script = (
        "import sys\n"
        "from conceptlib.cli import cli\n"
        "try:\n"
        "    cli(['--registry', sys.argv[1], 'list', *sys.argv[2:]])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print([m for m in ('sqlalchemy', 'numpy', 'torch') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(several), *options],
                          capture_output=True, text=True, check=True)
    *listed, imported = done.stdout.splitlines()
    assert "position" in "\n".join(listed)
    assert imported == "[]"


def test_listing_leaves_the_registry_and_its_directory_as_they_were(run, several):
    before = {p.name: p.read_bytes() for p in several.parent.iterdir()}
    assert run("list").exit_code == 0
    assert {p.name: p.read_bytes() for p in several.parent.iterdir()} == before


def test_the_reader_knows_the_head_revision():
    assert listing.REVISION == HEAD_REVISION, (
        "a new migration: check listing.CONCEPTS and ALIASES against it, then set listing.REVISION"
    )


@pytest.mark.parametrize("location", ["r.db", "~/r.db", "a b.db", "a#b.db", "dir//r.db", "./r.db", None])
def test_the_reader_reads_the_file_the_registry_opens(location, monkeypatch):
    monkeypatch.delenv("CONCEPTLIB_REGISTRY", raising=False)
    assert listing.registry_file(location) == sqlite_path(resolve_url(location))
    monkeypatch.setenv("CONCEPTLIB_REGISTRY", "env/r.db")
    assert listing.registry_file(location) == sqlite_path(resolve_url(location))


@pytest.mark.parametrize(
    "location",
    ["postgresql+psycopg://alice:pw@db.example/registry", "sqlite:///r.db", "sqlite://", "a?mode=ro.db",
     "a%20b.db", ":memory:"],
)
def test_urls_and_paths_a_url_parser_reads_otherwise_are_left_to_the_registry(location):
    assert listing.registry_file(location) is None
    assert listing.read_concepts(location) is None


def newer_revision(path: Path) -> None:
    execute(path, "UPDATE alembic_version SET version_num = '9999'")


def directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def foreign_tables(path: Path) -> None:
    path.unlink()
    execute(path, "CREATE TABLE t (x)")


DAMAGE = {
    "missing": (lambda path: path.unlink(), "no registry at"),
    "a directory": (directory, "is a directory"),
    "text": (lambda path: path.write_text("not a database, just text\n"), "not a SQLite database"),
    "sqlite header then garbage": (lambda path: path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 5000),
                                   "not a usable database"),
    "foreign tables": (foreign_tables, "not a conceptlib registry"),
    "newer revision": (newer_revision, "schema revision 9999"),
}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("options", [[], ["--json"]], ids=["table", "json"])
def test_a_registry_the_reader_declines_gets_the_registrys_error(run, several, monkeypatch, damage, options):
    spoil, fragment = DAMAGE[damage]
    spoil(several)
    assert listing.read_concepts(str(several)) is None
    fast = run("list", *options)
    assert_one_line_error(fast, fragment)
    through_the_registry(monkeypatch)
    assert fast.output == run("list", *options).output


def test_a_condition_schema_from_a_newer_release_is_the_same_error_on_either_path(run, several, monkeypatch):
    execute(several, """UPDATE concepts SET condition_schema = '{"kind": "spherical"}' WHERE name = 'size'""")
    fast = run("list")
    assert_one_line_error(fast, "unknown condition schema kind 'spherical'", "newer release")
    through_the_registry(monkeypatch)
    assert fast.output == run("list").output
