"""The registry API: versions, lineage, blobs, rollback, aliases, events, migrations and SQLite setup."""

from __future__ import annotations

import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from conceptlib.errors import ConceptError, CorruptBlobError, RegistryError, UnknownConceptError
from conceptlib.registry import Registry, blobs
from conceptlib.registry.api import NewVersion, VersionRef
from conceptlib.registry.engine import HEAD_REVISION, redact, resolve_url
from conceptlib.schema import Categorical, Continuous

COLOR = Categorical(("red", "green", "blue"))
POSITION = Continuous(("x", "y"), spatial=True)


def new_version(concept: str = "color", schema=COLOR, lineage=(), seed: int = 0, **metrics) -> NewVersion:
    return NewVersion(
        concept=concept, schema=schema, architecture="small", architecture_config={"channels": [8]},
        source="scenes", source_params={"n": 10}, attribute=concept, dataset_hash="d" * 64,
        hyperparameters={"lr": 1e-3}, seed=seed, metrics=dict(metrics), lineage=tuple(lineage),
    )


def weights(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), value, dtype=np.float32), "b": np.arange(3, dtype=np.float32)}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry.open(str(tmp_path / "r.db"), create=True)
    yield reg
    reg.close()


def test_versions_are_append_only_numbered_and_the_newest_is_current(registry):
    first = registry.add_version(new_version(loss=1.0), weights(1.0))
    second = registry.add_version(new_version(loss=0.5), weights(2.0))
    assert (first.number, second.number) == (1, 2)
    history = registry.history("color")
    assert [v.number for v in history] == [1, 2]
    assert [v.is_current for v in history] == [False, True]
    assert registry.concept("color").current == 2
    assert history[0].metrics == {"loss": 1.0}
    assert history[0].created_at.utcoffset() == timedelta(0)
    assert history[0].to_json()["created_at"].endswith("+00:00")


def test_weights_round_trip_and_the_blob_header_records_provenance(registry):
    version = registry.add_version(new_version(), weights(3.0))
    loaded = registry.load_weights(version)
    np.testing.assert_array_equal(loaded["w"], weights(3.0)["w"])
    with registry.engine.connect() as connection:
        data = connection.execute(text("SELECT data FROM blobs")).scalar()
    meta = blobs.read_metadata(bytes(data))
    assert meta["concept"] == "color" and meta["version"] == 1
    assert meta["schema"] == COLOR.to_json()
    assert blobs.sha256(bytes(data)) == version.weights_sha256


def test_lineage_records_the_exact_frozen_versions(registry):
    registry.add_version(new_version("position", POSITION), weights(1.0))
    registry.add_version(new_version("position", POSITION), weights(2.0))
    version = registry.add_version(new_version(lineage=[VersionRef("position", 1)]), weights(3.0))
    assert version.lineage == (VersionRef("position", 1),)
    assert registry.resolve("color").lineage == (VersionRef("position", 1),)


def test_a_lineage_naming_a_missing_version_writes_nothing(registry):
    registry.add_version(new_version("position", POSITION), weights(1.0))
    with pytest.raises(UnknownConceptError):
        registry.add_version(new_version(lineage=[VersionRef("position", 7)]), weights(2.0))
    assert [c.name for c in registry.concepts()] == ["position"]
    with registry.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM blobs")).scalar() == 1


def test_a_concept_keeps_its_schema(registry):
    registry.add_version(new_version(), weights(1.0))
    with pytest.raises(RegistryError, match="another concept name"):
        registry.add_version(new_version(schema=Categorical(("red", "blue"))), weights(2.0))
    assert len(registry.history("color")) == 1


def test_rollback_moves_the_pointer_and_never_deletes(registry):
    for value in (1.0, 2.0, 3.0):
        registry.add_version(new_version(), weights(value))
    assert registry.rollback("color") == (3, 2)
    assert registry.resolve("color").number == 2
    assert registry.rollback("color", to=3) == (2, 3)
    assert registry.rollback("color", to=1) == (3, 1)
    assert len(registry.history("color")) == 3
    with pytest.raises(ConceptError, match="oldest"):
        registry.rollback("color")
    with pytest.raises(ConceptError, match="already the current"):
        registry.rollback("color", to=1)
    kinds = [e.kind for e in registry.events("color")]
    assert kinds.count("rollback") == 3 and kinds.count("add") == 3


def test_aliases_resolve_move_and_are_removed(registry):
    registry.add_version(new_version(), weights(1.0))
    registry.add_version(new_version(), weights(2.0))
    assert registry.set_alias("color", "stable", 1) == 1
    assert registry.resolve("color", "stable").number == 1
    assert registry.concept("color").aliases == {"stable": 1}
    assert registry.set_alias("color", "stable") == 2
    assert registry.resolve("color", "stable").number == 2
    registry.remove_alias("color", "stable")
    with pytest.raises(UnknownConceptError):
        registry.resolve("color", "stable")
    for bad in ("", "12", "a b", "x@y"):
        with pytest.raises(ConceptError):
            registry.set_alias("color", bad)


def test_unknown_names_and_versions_are_clear_errors(registry):
    registry.add_version(new_version(), weights(1.0))
    with pytest.raises(UnknownConceptError, match="shape"):
        registry.resolve("shape")
    with pytest.raises(UnknownConceptError, match="9"):
        registry.resolve("color", 9)


def test_identical_weights_are_stored_once_per_header(registry):
    registry.add_version(new_version(), weights(1.0))
    registry.add_version(new_version(), weights(1.0))
    with registry.engine.connect() as connection:
        # the header names the version, so two versions never share a blob; each is verified on its own
        assert connection.execute(text("SELECT count(*) FROM blobs")).scalar() == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "header"])
def test_a_damaged_blob_is_refused(registry, damage):
    version = registry.add_version(new_version(), weights(1.0))
    with registry.engine.connect() as connection:
        data = bytearray(connection.execute(text("SELECT data FROM blobs")).scalar())
        if damage == "flip":
            data[-1] ^= 0xFF
        elif damage == "truncate":
            data = data[: len(data) // 2]
        else:
            data[8:16] = b"{\"bad\": "
        connection.execute(text("UPDATE blobs SET data = :d"), {"d": bytes(data)})
        connection.commit()
    with pytest.raises(CorruptBlobError, match="color@1"):
        registry.load_weights(version)


def test_a_blob_that_claims_another_version_is_refused(registry):
    one = registry.add_version(new_version(), weights(1.0))
    two = registry.add_version(new_version(), weights(2.0))
    with registry.engine.connect() as connection:
        connection.execute(text("PRAGMA foreign_keys = OFF"))
        connection.execute(text("UPDATE versions SET weights_sha256 = :s WHERE number = 2"),
                           {"s": one.weights_sha256})
        connection.commit()
    moved = registry.resolve("color", 2)
    assert moved.weights_sha256 != two.weights_sha256
    with pytest.raises(RegistryError, match="color@1"):
        registry.load_weights(moved)


def test_sqlite_is_opened_with_wal_foreign_keys_and_a_busy_timeout(registry):
    with registry.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() >= 1000


def test_a_new_registry_is_migrated_to_the_head_revision(registry):
    with registry.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
        tables = {row[0] for row in connection.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))}
    assert {"blobs", "concepts", "versions", "current_versions", "lineage", "aliases", "events"} <= tables


def test_a_registry_from_a_newer_release_is_refused(tmp_path):
    path = tmp_path / "r.db"
    Registry.open(str(path), create=True).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(RegistryError, match="upgrade conceptlib"):
        Registry.open(str(path))


def test_missing_non_sqlite_and_foreign_databases_are_refused(tmp_path):
    with pytest.raises(RegistryError, match="no registry at"):
        Registry.open(str(tmp_path / "missing.db"))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all, just text")
    with pytest.raises(RegistryError, match="not a SQLite database"):
        Registry.open(str(junk))
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(RegistryError, match="not a conceptlib registry"):
        Registry.open(str(foreign))
    with pytest.raises(RegistryError, match="does not exist"):
        Registry.open(str(tmp_path / "nope" / "r.db"), create=True)


def test_urls_resolve_from_argument_environment_and_default(monkeypatch, tmp_path):
    monkeypatch.delenv("CONCEPTLIB_REGISTRY", raising=False)
    assert resolve_url(None) == "sqlite:///registry.db"
    monkeypatch.setenv("CONCEPTLIB_REGISTRY", str(tmp_path / "env.db"))
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'env.db'}"
    assert resolve_url("postgresql+psycopg://u:p@h/db") == "postgresql+psycopg://u:p@h/db"


def test_passwords_are_redacted():
    shown = redact("postgresql+psycopg://alice:s3cret@db.example/registry")
    assert "s3cret" not in shown and "alice" in shown


def test_a_missing_database_driver_is_a_clear_error():
    with pytest.raises(RegistryError, match="cannot open registry"):
        Registry.open("nosuchdialect://host/db")


def test_concurrent_writers_get_dense_unique_version_numbers(tmp_path):
    path = str(tmp_path / "r.db")
    Registry.open(path, create=True).close()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        reg = Registry.open(path)
        try:
            for i in range(5):
                reg.add_version(new_version(seed=seed), weights(seed * 10 + i))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            reg.close()

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    registry = Registry.open(path)
    numbers = [v.number for v in registry.history("color")]
    assert numbers == list(range(1, 21))
    assert registry.concept("color").current == 20
    for version in registry.history("color"):
        registry.load_weights(version)
    registry.close()


def test_the_same_weights_and_metadata_always_encode_to_the_same_bytes():
    """A seeded run must be checkable by its weights' sha256 (safetensors orders several keys by hash)."""
    from conceptlib.registry import blobs

    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2, np.float32)}
    metadata = {name: {"i": i} for i, name in enumerate(["concept", "version", "schema", "architecture", "a", "b"])}
    digests = {blobs.sha256(blobs.encode(tensors, dict(metadata))) for _ in range(20)}
    assert len(digests) == 1
    assert blobs.read_metadata(blobs.encode(tensors, metadata)) == metadata
