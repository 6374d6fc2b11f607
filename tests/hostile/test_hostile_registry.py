"""Hostile names, URLs and registry files (issue 25, cases 5, 7, 8 and 9).

A password in a registry URL never leaves the process; a name no expression can reference never enters a
registry, and names already in one (edited by hand, from an older release) print as text, not as terminal
commands; a file that is not a registry (another program's SQLite file, a FIFO, a link to nothing, a
path in a missing folder) is refused untouched; a row edited by hand is one line, not a traceback.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from conceptlib.cli import cli
from conceptlib.redaction import redact_text, redact_url
from tests.conftest import TINY_SAMPLING, assert_one_line_error
from tests.hostile import corpus
from tests.hostile.support import dump, execute, one_line_error
from tests.reliability import TINY_CD

SECRET = "s3cr3t-pw"


# ------------------------------------------------------------------ case 5: passwords
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://alice:s3cr3t-pw@db/registry", "postgresql+psycopg://alice:***@db/registry"),
        ("postgresql://alice:p@ss-s3cr3t-pw@db/registry", "postgresql://alice:***@db/registry"),
        ("postgresql://alice:p/ss-s3cr3t-pw@db/registry", "postgresql://alice:***@db/registry"),
        ("postgresql://alice@db/registry?password=s3cr3t-pw&sslmode=require",
         "postgresql://alice@db/registry?password=***&sslmode=require"),
        ("postgresql://db/registry?sslpassword=s3cr3t-pw", "postgresql://db/registry?sslpassword=***"),
        ("sqlite:////tmp/a@b/registry.db", "sqlite:////tmp/a@b/registry.db"),
    ],
)
def test_one_redaction_hides_every_kind_of_password(url, shown):
    assert redact_url(url) == shown
    assert redact_text(f"cannot reach {url}: refused") == f"cannot reach {shown}: refused"


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg://alice@127.0.0.1:1/registry?password=s3cr3t-pw",
     "postgresql+psycopg://alice:p@ss-s3cr3t-pw@127.0.0.1:1/registry",
     "postgresql+psycopg://alice:s3cr3t-pw@127.0.0.1:1/registry?sslpassword=s3cr3t-pw"],
    ids=["in the query", "holding an @", "in userinfo and query"],
)
def test_a_password_in_the_query_or_holding_an_at_sign_is_never_printed(url):
    for args in (["list"], ["show", "shape"], ["add", "shape", *TINY_CD], ["export", "shape", "-o", "x.cpt"]):
        result = CliRunner().invoke(cli, ["--registry", url, *args])
        assert_one_line_error(result)
        assert SECRET not in result.output


def test_an_imported_files_origin_never_stores_a_password(run, registry_path, tmp_path, base):
    leaky = f"postgresql://alice:{SECRET}@db.example/team?password={SECRET}"
    path = tmp_path / "leaky.cpt"
    path.write_bytes(corpus.forge(base.shape, lambda m: m.update(exported_from=leaky)))
    outputs = [run("import", str(path)).output, run("show", "shape", "--json").output, run("show", "shape").output]
    assert "exported from postgresql://alice:***@db.example/team?password=***" in outputs[1]
    assert SECRET not in "".join(outputs)
    assert SECRET not in dump(registry_path)


def test_a_working_registry_never_writes_its_password_into_an_export_or_event(registry_url, tmp_path):
    if "://" not in registry_url:
        pytest.skip("a SQLite file has no password; this runs on the PostgreSQL registry (CI)")
    parsed = make_url(registry_url)
    if not parsed.password:
        pytest.skip("the PostgreSQL test server has no password")
    in_query = parsed.set(password=None).update_query_dict({"password": parsed.password})
    url = in_query.render_as_string(hide_password=False)
    runner, export, copy = CliRunner(), tmp_path / "shape.cpt", str(tmp_path / "copy.db")
    outputs = [runner.invoke(cli, ["--registry", url, *args]).output
               for args in (["add", "shape", *TINY_CD], ["export", "shape", "-o", str(export)])]
    outputs += [runner.invoke(cli, ["--registry", copy, *args]).output
                for args in (["import", str(export)], ["show", "shape", "--json"])]
    assert parsed.password not in "".join(outputs), outputs
    assert parsed.password not in corpus.read_members(export.read_bytes())["manifest.json"].decode()
    assert parsed.password not in dump(Path(copy))


# ------------------------------------------------------------------ case 7: names
BAD_NAMES = ["\x1b[2J", "a\nb\rc", "a\x00b", "a/b", "../up", "x" * 10_000, "bad name!", "9lives", "-dash", "",
             "ünïcode"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_add_refuses_a_name_no_expression_can_reference_before_training(run, registry_path, name):
    result = run("add", "--attribute", "shape", *TINY_CD, "--", name)
    assert_one_line_error(result, "is not a name", "an expression can refer to it")
    assert "\x1b" not in result.output and "x" * 100 not in result.output
    assert not registry_path.exists()


@pytest.mark.parametrize("alias", ["1a", "-x", "ünï", "a b", "a\x1b[2J", "y" * 65], ids=repr)
def test_alias_refuses_a_name_no_expression_can_reference(run, trained, alias):
    before = dump(trained)
    assert_one_line_error(run("alias", "--", "color", alias), "is not a name")
    assert dump(trained) == before


def test_valid_names_and_aliases_are_referenced_by_expressions(run, trained, tmp_path):
    assert run("alias", "color", "stable-2_x").exit_code == 0
    result = run("compose", "position=(0.5,0.5) & color@stable-2_x=red", "-n", "1", "-o", str(tmp_path / "g.png"),
                 *TINY_SAMPLING)
    assert result.exit_code == 0, result.output


def test_names_and_text_from_a_hand_edited_registry_print_as_text(run, trained):
    execute(trained, "UPDATE concepts SET name = ? WHERE name = 'color'", "a\nb\rc")
    execute(trained, "UPDATE concepts SET name = ? WHERE name = 'shape'", "\x1b[2J")
    execute(trained, "UPDATE versions SET source = ?", "[bold red]scenes")
    outputs = [run("list"), run("show", "a\nb\rc"), run("history", "\x1b[2J")]
    for result in outputs:
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\r" not in result.output
    assert "a\\nb\\rc" in outputs[0].output and "\\x1b[2J" in outputs[0].output
    assert not any(line.strip().startswith("b") for line in outputs[0].output.splitlines())  # no row drawn by \n
    assert "[bold red]scenes" in outputs[1].output


# ------------------------------------------------------------------ case 8: files that are not registries
def foreign_database(path: Path, *statements: str) -> bytes:
    with closing(sqlite3.connect(path)) as db, db:
        for statement in statements:
            db.execute(statement)
    return path.read_bytes()


def test_a_refused_foreign_sqlite_file_is_left_byte_for_byte(run, registry_path, tmp_path, base):
    before = foreign_database(registry_path, "CREATE TABLE notes (text)", "INSERT INTO notes VALUES ('mine')")
    cpt = tmp_path / "shape.cpt"
    cpt.write_bytes(base.shape)
    for args in (["list"], ["show", "shape"], ["add", "shape", *TINY_CD], ["import", str(cpt)]):
        assert_one_line_error(run(*args), "not a conceptlib registry")
        assert registry_path.read_bytes() == before  # still a rollback-journal file: never switched to WAL


def test_a_foreign_sqlite_file_that_claims_our_schema_revision_is_refused(run, registry_path):
    before = foreign_database(registry_path, "CREATE TABLE alembic_version (version_num TEXT)",
                              "INSERT INTO alembic_version VALUES ('0001')", "CREATE TABLE notes (text)")
    for args in (["list"], ["list", "--json"], ["show", "shape"], ["history", "shape"]):
        assert_one_line_error(run(*args), "not a conceptlib registry")
    assert registry_path.read_bytes() == before


def test_a_fifo_as_the_registry_is_refused_without_waiting_on_it(bounded, tmp_path):
    fifo = tmp_path / "registry.db"
    os.mkfifo(fifo)
    for args in (["list"], ["show", "shape"], ["add", "shape", *TINY_CD]):
        code, output = bounded("--registry", str(fifo), *args, timeout=30)
        one_line_error(code, output, "not a regular file")


def test_a_link_to_nothing_as_the_registry_creates_nothing_at_its_target(run, registry_path, tmp_path, base):
    target = tmp_path / "elsewhere.db"
    registry_path.symlink_to(target)
    cpt = tmp_path / "shape.cpt"
    cpt.write_bytes(base.shape)
    for args in (["import", str(cpt)], ["add", "shape", *TINY_CD], ["list"]):
        assert_one_line_error(run(*args), "symbolic link to a missing file")
        assert not target.exists()


def test_a_failed_add_or_import_into_a_new_registry_leaves_no_file(run, registry_path, tmp_path, base):
    assert_one_line_error(run("add", "shape", *TINY_CD, "--param", "n=0"), "n must be")
    assert_one_line_error(run("add", "shape", *TINY_CD, "--with", "position"), "not in the registry")
    bad = tmp_path / "bad.cpt"
    bad.write_bytes(corpus.forge_dtype(base.shape, "BF16"))
    assert_one_line_error(run("import", str(bad)), "BF16")
    assert list(tmp_path.glob("registry.db*")) == []


def test_a_registry_in_a_missing_folder_is_refused_and_no_folder_is_made(tmp_path):
    path = tmp_path / "no" / "such" / "registry.db"
    for args in (["add", "shape", *TINY_CD], ["list"]):
        assert_one_line_error(CliRunner().invoke(cli, ["--registry", str(path), *args]))
    assert not (tmp_path / "no").exists()


# ------------------------------------------------------------------ case 9: rows edited by hand
EDITS = {
    "metrics that are not JSON": "UPDATE versions SET metrics = '{bad'",
    "hyperparameters that are a list": "UPDATE versions SET hyperparameters = '[1, 2]'",
    "a current pointer to a missing version": "UPDATE current_versions SET version_id = 999",
    "an alias to a missing version": "UPDATE aliases SET version_id = 999",
    "a schema that is not an object": "UPDATE concepts SET condition_schema = '[\"categorical\"]'",
    "a creation time that is not a time": "UPDATE versions SET created_at = 'yesterday'",
    "an architecture config of channels as text": "UPDATE versions SET architecture_config = "
                                                  "'{\"channels\": [\"x\", 1, 2]}'",
    "an image size of a million": "UPDATE versions SET hyperparameters = '{\"image_size\": 1000000}'",
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_row_edited_by_hand_is_one_line_not_a_traceback(run, trained, tmp_path, edit):
    assert run("alias", "color", "stable").exit_code == 0
    execute(trained, EDITS[edit])
    refused = 0
    for args in (["list"], ["list", "--json"], ["show", "color"], ["show", "color@stable", "--json"],
                 ["history", "color", "--json"], ["export", "color", "-o", str(tmp_path / "c.cpt")],
                 ["compose", "position=(0.5,0.5) & color=red", "-n", "1", "-o", str(tmp_path / "g.png"),
                  *TINY_SAMPLING]):
        result = run(*args)
        if result.exit_code:
            assert_one_line_error(result)
            refused += 1
    assert refused, "an edit every command ignores tests nothing"


def test_a_damaged_row_names_the_registry_and_what_to_do(run, trained):
    execute(trained, EDITS["metrics that are not JSON"])
    assert_one_line_error(run("show", "color"), "holds a row that cannot be read", "restore it from a backup")
    assert json.loads(run("list", "--json").output)[0]["name"] == "color"


def test_reading_a_registry_with_a_damaged_row_writes_nothing(run, trained):
    execute(trained, EDITS["a current pointer to a missing version"])
    before = dump(trained)
    assert_one_line_error(run("show", "color"), "points at a version the registry does not hold")
    assert dump(trained) == before
