"""``concept list`` without SQLAlchemy: a SQLite registry's concepts read with the stdlib ``sqlite3``.

Opening a ``Registry`` imports SQLAlchemy and numpy, most of a cold ``concept list`` (0.8 of 1.3 s). This
module sits outside ``conceptlib.registry`` because importing anything in that package imports them.

It answers only when it is sure to answer what ``Registry.concepts()`` would: a registry named by a bare path
(not a URL), an existing SQLite file, at the schema revision these queries were written for. Anything else
(PostgreSQL or SQLite spelled as a URL, a missing file, a file that is not a registry, another revision, a
busy or unreadable database) gets None, and the caller opens the ``Registry``, whose checks and one-line
errors then apply unchanged.

The connection never creates a file (``mode=rw``, not ``rwc``), writes nothing (``PRAGMA query_only``) and
reads in one transaction, so a concurrent ``concept add`` is seen whole or not at all. It is not opened
``mode=ro``: a read-only connection to a WAL database leaves ``-wal`` and ``-shm`` files beside it, which a
read-write one removes on close, as every other registry connection does.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from conceptlib.schema import schema_from_json

REVISION = "0001"
"""The schema revision the queries below read (``engine.HEAD_REVISION`` when they were checked against it)."""
REGISTRY_ENV = "CONCEPTLIB_REGISTRY"
DEFAULT_REGISTRY = "registry.db"

CONCEPTS = """
SELECT c.id, c.name, c.description, c.condition_schema,
       (SELECT v.number FROM current_versions p JOIN versions v ON v.id = p.version_id WHERE p.concept_id = c.id),
       (SELECT count(*) FROM versions v WHERE v.concept_id = c.id)
FROM concepts c ORDER BY c.name
"""
ALIASES = "SELECT a.concept_id, a.name, v.number FROM aliases a JOIN versions v ON v.id = a.version_id ORDER BY a.name"


def registry_file(location: str | None) -> Path | None:
    """The SQLite file ``Registry.open(location)`` opens, where that is plain without SQLAlchemy's URL parser.

    As ``engine.resolve_url``: ``location``, else ``$CONCEPTLIB_REGISTRY``, else ./registry.db. None for a
    URL, and for paths the URL parser would read otherwise ('?' starts a query, '%' an escape, ':memory:').
    """
    location = location or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY
    if "://" in location:
        return None
    path = Path(location).expanduser()
    if "?" in str(path) or "%" in str(path) or str(path) == ":memory:":
        return None
    return path


def read_concepts(location: str | None) -> list[dict[str, Any]] | None:
    """Every concept as ``ConceptInfo.to_json()`` has it, by name; None where the ``Registry`` must answer.

    A condition schema this release does not know raises the same ``ConditionError`` as the ``Registry``.
    """
    path = registry_file(location)
    try:
        if path is None or not path.is_file():
            return None
        # timeout=0: a busy database is left to the Registry, which waits for it
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None, timeout=0)
        with closing(connection):
            connection.execute("PRAGMA query_only = ON")
            connection.execute("BEGIN")
            if connection.execute("SELECT version_num FROM alembic_version").fetchall() != [(REVISION,)]:
                return None
            concepts = connection.execute(CONCEPTS).fetchall()
            aliases: dict[int, dict[str, int]] = {}
            for concept_id, alias, number in connection.execute(ALIASES):
                aliases.setdefault(concept_id, {})[alias] = number
        if not all(isinstance(name, str) and isinstance(text, str) for _, name, text, *_ in concepts):
            return None  # a hand-edited row: the Registry words the error
        return [
            {
                "name": name,
                "description": description,
                "schema": schema_from_json(json.loads(schema)).to_json(),
                "current": current,
                "versions": versions,
                "aliases": aliases.get(concept_id, {}),
            }
            for concept_id, name, description, schema, current, versions in concepts
        ]
    except (sqlite3.Error, OSError, ValueError, TypeError):
        return None
