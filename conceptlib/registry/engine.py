"""Opening a registry: URL handling, SQLite pragmas, and migrations applied on open.

SQLite is opened with foreign keys on and a busy timeout, and switched to WAL (readers never block the
writer) only once the file is known to be a conceptlib registry: a refused file is left byte for byte as it
was. A path that is not a regular file (a FIFO, a device) or a link to nothing is refused before it is
opened, so nothing hangs and nothing is created at a link's target;
write transactions begin IMMEDIATE so two writers queue on the lock instead of failing when one
upgrades a read lock. PostgreSQL gets the same one-writer-at-a-time rule from a transaction-scoped
advisory lock with a lock timeout, so version numbers stay dense without serialization retries.
Migrations run through alembic only when the stored revision is behind, so read-only commands stay fast.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError

from conceptlib.errors import RegistryError
from conceptlib.redaction import redact_url
from conceptlib.registry.models import Base

REGISTRY_ENV = "CONCEPTLIB_REGISTRY"
DEFAULT_REGISTRY = "registry.db"
HEAD_REVISION = "0001"
KNOWN_REVISIONS = ("0001",)
BUSY_TIMEOUT_MS = 30_000
SQLITE_MAGIC = b"SQLite format 3\x00"
WRITE_LOCK_KEY = 0x636F6E63  # "conc": the advisory lock every PostgreSQL write transaction takes


def resolve_url(location: str | None) -> str:
    """A SQLAlchemy URL from ``--registry``, ``$CONCEPTLIB_REGISTRY`` or ``./registry.db``.

    A bare path means a SQLite file; anything with ``://`` is taken as a SQLAlchemy URL.
    """
    location = location or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY
    if "://" in location:
        return location
    return f"sqlite:///{Path(location).expanduser()}"


def redact(url: str) -> str:
    """The URL with any password hidden, for messages, files and events."""
    return redact_url(url)


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def registry_files(url: str) -> list[Path]:
    """The files a SQLite registry lives in (database, WAL, shared memory, rollback journal), which no output
    may overwrite; none for other databases."""
    try:
        path = sqlite_path(url)
    except (ArgumentError, ValueError):
        return []
    if path is None:
        return []
    return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]


def open_engine(url: str, create: bool) -> Engine:
    """An engine on a registry whose schema is at the head revision.

    ``create`` allows a new SQLite file; without it a missing file is an error (a typo in
    ``--registry`` must not silently start an empty registry).
    """
    shown = redact(url)
    try:
        path = sqlite_path(url)
    except (ArgumentError, ValueError):
        raise RegistryError(
            f"{shown} is neither a registry file nor a SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db); "
            "check --registry"
        ) from None
    if path is not None:
        check_sqlite_file(path, create)
    elif url.partition("://")[2].partition("?")[0].count("@") > 1:
        raise RegistryError(
            f"registry URL {shown} has a password holding '@', which would be read as part of the host "
            "(and sent to it); write it percent-encoded, '@' as %40"
        )
    try:
        engine = create_engine(url)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise RegistryError(f"cannot open registry {shown}: {exc}") from None
    except ModuleNotFoundError as exc:
        raise RegistryError(
            f"cannot open registry {shown}: the driver {exc.name!r} is not installed "
            "(for PostgreSQL: pip install 'conceptlib[postgres]')"
        ) from None
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    try:
        _migrate(engine, shown)
        if engine.dialect.name == "sqlite":
            _use_wal(engine)
    except OperationalError as exc:
        raise RegistryError(f"cannot open registry {shown}: {exc.orig}") from None
    except DatabaseError as exc:
        raise RegistryError(f"registry {shown} is not a usable database: {exc.orig}") from None
    return engine


def check_sqlite_file(path: Path, create: bool) -> None:
    """Refuse a registry path that cannot be a SQLite registry, before anything opens (or creates) it."""
    if path.is_symlink() and not path.exists():
        raise RegistryError(f"registry {path} is a symbolic link to a missing file; point --registry at the file")
    if path.exists():
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise RegistryError(f"registry {path} is a directory; pass a .db file with --registry")
        if not stat.S_ISREG(mode):
            raise RegistryError(f"registry {path} is not a regular file (a FIFO or a device); pass a .db file")
        try:
            with path.open("rb") as handle:
                head = handle.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise RegistryError(f"cannot read registry {path}: {exc.strerror or exc}") from None
        if head and head != SQLITE_MAGIC:
            raise RegistryError(f"registry {path} is not a SQLite database; pass a registry file with --registry")
    elif not create:
        raise RegistryError(
            f"no registry at {path}; train a concept with 'concept add' to create one, "
            f"or point --registry / ${REGISTRY_ENV} at an existing one"
        )
    elif not path.parent.exists():
        raise RegistryError(f"cannot create registry {path}: directory {path.parent} does not exist")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        immediate = connection.get_execution_options().get("immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _use_wal(engine: Engine) -> None:
    """Switch a checked registry to WAL: the mode is stored in the file, so every later connection uses it.

    Outside any transaction (SQLite refuses the switch inside one), hence on the driver's connection.
    """
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()
    finally:
        connection.close()


def lock_for_write(connection: Connection) -> None:
    """Queue this write transaction behind any other one (SQLite did so already with BEGIN IMMEDIATE).

    On PostgreSQL a transaction-scoped advisory lock serialises writers; waiting longer than the busy
    timeout raises a lock-timeout error, which the registry's retry loop counts as contention.
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = {BUSY_TIMEOUT_MS}")
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")


def _migrate(engine: Engine, shown: str) -> None:
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        revision = None
        if "alembic_version" in tables:
            revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if revision == HEAD_REVISION:
        missing = sorted(set(Base.metadata.tables) - tables)
        if missing:
            raise RegistryError(
                f"{shown} records schema revision {revision} but has no {', '.join(missing)} table; it is not a "
                "conceptlib registry (or was damaged): pass another --registry"
            )
        return
    if revision is not None and revision not in KNOWN_REVISIONS:
        raise RegistryError(
            f"registry {shown} has schema revision {revision}, newer than this conceptlib knows "
            f"({HEAD_REVISION}); upgrade conceptlib to open it"
        )
    if revision is None and tables:
        raise RegistryError(f"{shown} holds tables but is not a conceptlib registry; pass another --registry")
    _run_alembic(engine)


def _run_alembic(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.connect().execution_options(immediate=True) as connection:
        config.attributes["connection"] = connection
        with connection.begin():
            lock_for_write(connection)  # two processes opening a new registry at once migrate it once
            command.upgrade(config, "head")
