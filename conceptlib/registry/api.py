"""The registry as a Python API: concepts, append-only versions, lineage, aliases, events.

Every write is one transaction (the version row, its blob, its lineage, the current pointer and the
event land together or not at all) and is retried with backoff while another process holds the
database, within a bounded time. Reads return plain dataclasses detached from any session; a row that
cannot be read (edited by hand, damaged) is a one-line :class:`RegistryError`, not a traceback. Concept and
alias names are checked against :mod:`conceptlib.names` where they enter.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from conceptlib.errors import ConceptError, CorruptBlobError, RegistryError, UnknownConceptError
from conceptlib.names import check_name
from conceptlib.redaction import redact_text
from conceptlib.registry import blobs
from conceptlib.registry.engine import (
    check_sqlite_file,
    lock_for_write,
    open_engine,
    redact,
    registry_files,
    resolve_url,
    sqlite_path,
)
from conceptlib.registry.models import Alias, Blob, Concept, CurrentVersion, Event, Lineage, Version
from conceptlib.schema import ConditionSchema, schema_from_json

T = TypeVar("T")
WRITE_RETRY_SECONDS = 60.0
UNREADABLE = (DatabaseError, ValueError, TypeError, KeyError, AttributeError)
"""What reading a hand-edited or damaged row raises: a driver error, or a value its column cannot decode."""


@dataclass(frozen=True)
class VersionRef:
    """A concept version named by concept and number, as lineage records it."""

    concept: str
    number: int

    def __str__(self) -> str:
        return f"{self.concept}@{self.number}"


def split_ref(text: str) -> tuple[str, str | None]:
    """``name@ref`` -> (name, ref); ``name`` -> (name, None). The ref (a number or an alias) is resolved by
    :meth:`Registry.resolve`."""
    name, _, ref = text.partition("@")
    if not name or (ref == "" and "@" in text):
        raise ConceptError(f"bad concept reference {text!r}; write NAME, NAME@VERSION or NAME@ALIAS")
    return name, ref or None


@dataclass(frozen=True)
class VersionInfo:
    concept: str
    number: int
    created_at: datetime
    schema: ConditionSchema
    architecture: str
    architecture_config: dict[str, Any]
    source: str
    source_params: dict[str, Any]
    attribute: str
    dataset_hash: str
    hyperparameters: dict[str, Any]
    seed: int
    metrics: dict[str, Any]
    weights_sha256: str
    status: str
    lineage: tuple[VersionRef, ...]
    aliases: tuple[str, ...]
    is_current: bool
    origin: dict[str, Any] | None = None
    """For an imported version: its ref and weights sha256 in the registry it came from, and the file."""

    @property
    def ref(self) -> VersionRef:
        return VersionRef(self.concept, self.number)

    def to_json(self) -> dict[str, Any]:
        return {
            "concept": self.concept,
            "version": self.number,
            "created_at": self.created_at.isoformat(),
            "current": self.is_current,
            "aliases": list(self.aliases),
            "schema": self.schema.to_json(),
            "architecture": self.architecture,
            "architecture_config": self.architecture_config,
            "source": self.source,
            "source_params": self.source_params,
            "attribute": self.attribute,
            "dataset_hash": self.dataset_hash,
            "hyperparameters": self.hyperparameters,
            "seed": self.seed,
            "metrics": self.metrics,
            "weights_sha256": self.weights_sha256,
            "status": self.status,
            "lineage": [str(ref) for ref in self.lineage],
            "origin": self.origin,
        }


@dataclass(frozen=True)
class ConceptInfo:
    name: str
    description: str
    schema: ConditionSchema
    current: int | None
    versions: int
    aliases: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "schema": self.schema.to_json(),
            "current": self.current,
            "versions": self.versions,
            "aliases": self.aliases,
        }


@dataclass(frozen=True)
class NewVersion:
    """Everything the trainer knows about a finished run, to be written as one version."""

    concept: str
    schema: ConditionSchema
    architecture: str
    architecture_config: dict[str, Any]
    source: str
    source_params: dict[str, Any]
    attribute: str
    dataset_hash: str
    hyperparameters: dict[str, Any]
    seed: int
    metrics: dict[str, Any]
    lineage: Sequence[VersionRef] = ()
    description: str = ""


@dataclass(frozen=True)
class ImportedVersion:
    """A version read from an export file; ``new.lineage`` names versions of the exporting registry."""

    new: NewVersion
    tensors: dict[str, np.ndarray]
    origin: VersionRef
    origin_sha256: str


@dataclass(frozen=True)
class ImportResult:
    origin: VersionRef
    ref: VersionRef
    copied: bool
    """False when an identical version was already here and was reused."""


@dataclass(frozen=True)
class EventInfo:
    created_at: datetime
    kind: str
    concept: str
    version: int | None
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.created_at.isoformat(),
            "kind": self.kind,
            "concept": self.concept,
            "version": self.version,
            "details": self.details,
        }


class Registry:
    """A handle on one registry database. Cheap to open; safe to share across threads of one process."""

    def __init__(self, engine: Engine | None, url: str) -> None:
        self._engine = engine
        self.url = url

    @classmethod
    def open(cls, location: str | None = None, create: bool = False, deferred: bool = False) -> Registry:
        """Open ``location`` (path or SQLAlchemy URL; default ``$CONCEPTLIB_REGISTRY`` or ./registry.db).

        ``create`` allows a new SQLite file; with ``deferred`` too, a missing file is created by the first
        write rather than now, so a job that fails before it writes (a bad file to import, a training run
        that stops) leaves no empty registry behind. Until then the registry reads as empty.
        """
        url = resolve_url(location)
        try:
            path = sqlite_path(url) if create and deferred else None
        except (ArgumentError, ValueError):
            path = None  # open_engine words the error
        if path is not None and not path.exists():
            check_sqlite_file(path, create=True)
            return cls(None, url)
        return cls(open_engine(url, create=create), url)

    @property
    def engine(self) -> Engine:
        """The database engine; a deferred registry's file is created (and migrated) here."""
        if self._engine is None:
            self._engine = open_engine(self.url, create=True)
        return self._engine

    @property
    def display_url(self) -> str:
        return redact(self.url)

    def files(self) -> list[Path]:
        """The files a SQLite registry lives in, which no output may overwrite (none for other databases)."""
        return registry_files(self.url)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    # ----------------------------------------------------------------- reads
    def concepts(self) -> list[ConceptInfo]:
        if self._not_created():
            return []
        with self._reading() as session:
            rows = session.scalars(select(Concept).order_by(Concept.name)).all()
            return [self._concept_info(session, row) for row in rows]

    def concept(self, name: str) -> ConceptInfo:
        with self._reading(name) as session:
            return self._concept_info(session, self._concept_row(session, name))

    def history(self, name: str) -> list[VersionInfo]:
        with self._reading(name) as session:
            concept = self._concept_row(session, name)
            rows = session.scalars(
                select(Version).where(Version.concept_id == concept.id).order_by(Version.number)
            ).all()
            return [self._version_info(session, concept, row) for row in rows]

    def resolve(self, name: str, ref: str | int | None = None) -> VersionInfo:
        """The version ``name@ref``: current for None, a number, or an alias."""
        with self._reading(name) as session:
            concept = self._concept_row(session, name)
            return self._version_info(session, concept, self._version_row(session, concept, ref))

    def load_weights(self, version: VersionInfo) -> dict[str, np.ndarray]:
        """The version's tensors, after verifying the blob's sha256 and its provenance header."""
        return blobs.decode(self.weights_blob(version), version.weights_sha256, str(version.ref), verified=True)

    def weights_blob(self, version: VersionInfo) -> bytes:
        """The version's safetensors bytes, verified against its sha256 and the header's concept and version."""
        try:
            with Session(self.engine) as session:
                blob = session.get(Blob, version.weights_sha256)
                if blob is None:
                    raise RegistryError(f"weights of {version.ref} are missing from the registry")
                data = bytes(blob.data)
        except (DatabaseError, TypeError, ValueError) as exc:
            raise CorruptBlobError(f"weights of {version.ref} are corrupt and cannot be read: {exc}") from None
        blobs.verify(data, version.weights_sha256, str(version.ref))
        meta = blobs.read_metadata(data, f"weights of {version.ref}")
        if meta.get("concept") != version.concept or meta.get("version") != version.number:
            raise RegistryError(
                f"weights blob of {version.ref} says it belongs to "
                f"{meta.get('concept')}@{meta.get('version')}; the registry is inconsistent"
            )
        return data

    def events(self, name: str | None = None, limit: int = 100) -> list[EventInfo]:
        if self._not_created():
            return []
        with self._reading() as session:
            query = select(Event).order_by(Event.id.desc()).limit(limit)
            if name is not None:
                query = query.where(Event.concept == name)
            return [
                EventInfo(_utc(e.created_at), e.kind, e.concept, e.version, dict(e.details))
                for e in session.scalars(query)
            ]

    # ---------------------------------------------------------------- writes
    def add_version(self, new: NewVersion, tensors: dict[str, np.ndarray]) -> VersionInfo:
        """Write a version, its blob, lineage, the current pointer and an event in one transaction."""
        number = self._write(lambda session: self._insert_version(session, new, tensors, current=True))
        return self.resolve(new.concept, number)

    def import_versions(self, versions: Sequence[ImportedVersion], source: str) -> list[ImportResult]:
        """Write versions exported from another registry in one transaction, lineage first.

        A version already held here (same concept, architecture, config and tensors) is reused rather
        than copied, so importing a file twice adds nothing. Each new version gets the next number of
        its concept here, its lineage is renumbered to match, and it records where it came from. The
        last version (the exported one) becomes current; a lineage version only when its concept had none.
        """

        def write(session: Session) -> list[ImportResult]:
            renumbered: dict[VersionRef, VersionRef] = {}
            results = []
            for i, item in enumerate(versions):
                lineage = tuple(renumbered[ref] for ref in item.new.lineage)
                new = replace(item.new, lineage=lineage)
                existing = self._same_version(session, new, item.tensors)
                if existing is not None:
                    renumbered[item.origin] = VersionRef(new.concept, existing)
                    results.append(ImportResult(item.origin, renumbered[item.origin], copied=False))
                    continue
                origin = {"ref": str(item.origin), "weights_sha256": item.origin_sha256, "from": source}
                number = self._insert_version(session, new, item.tensors, current=i == len(versions) - 1,
                                              origin=origin)
                renumbered[item.origin] = VersionRef(new.concept, number)
                results.append(ImportResult(item.origin, renumbered[item.origin], copied=True))
            return results

        return self._write(write)

    def rollback(self, name: str, to: int | str | None = None) -> tuple[int, int]:
        """Point ``name`` at version ``to`` (default: the version before the current one).

        Returns (from, to). Versions are never deleted, so a rollback is undone by rolling
        'back' to the newer number.
        """

        def write(session: Session) -> tuple[int, int]:
            concept = self._concept_row(session, name)
            current = self._version_row(session, concept, None)
            if to is None:
                target = session.scalar(
                    select(Version)
                    .where(Version.concept_id == concept.id, Version.number < current.number)
                    .order_by(Version.number.desc())
                    .limit(1)
                )
                if target is None:
                    raise ConceptError(
                        f"{name}@{current.number} is the oldest version; nothing to roll back to "
                        "(name a newer one with --to)"
                    )
            else:
                target = self._version_row(session, concept, to)
            if target.id == current.id:
                raise ConceptError(f"{name}@{target.number} is already the current version")
            self._point(session, concept.id, target.id)
            session.add(Event(kind="rollback", concept=name, version=target.number,
                              details={"from": current.number, "to": target.number}))
            return current.number, target.number

        return self._write(write)

    def set_alias(self, name: str, alias: str, ref: int | str | None = None) -> int:
        """Point alias ``name@alias`` at a version (default: the current one); returns its number."""
        check_name(alias, "alias")

        def write(session: Session) -> int:
            concept = self._concept_row(session, name)
            version = self._version_row(session, concept, ref)
            row = session.get(Alias, (concept.id, alias))
            previous = None
            if row is None:
                session.add(Alias(concept_id=concept.id, name=alias, version_id=version.id))
            else:
                previous = session.get(Version, row.version_id).number  # type: ignore[union-attr]
                row.version_id = version.id
            session.add(Event(kind="alias", concept=name, version=version.number,
                              details={"alias": alias, "previous": previous}))
            return version.number

        return self._write(write)

    def remove_alias(self, name: str, alias: str) -> None:
        def write(session: Session) -> None:
            concept = self._concept_row(session, name)
            row = session.get(Alias, (concept.id, alias))
            if row is None:
                raise UnknownConceptError(f"concept {name!r} has no alias {alias!r}")
            session.delete(row)
            session.add(Event(kind="unalias", concept=name, version=None, details={"alias": alias}))

        self._write(write)

    # --------------------------------------------------------------- helpers
    def _not_created(self) -> bool:
        """A deferred SQLite registry that no write has created yet: it holds nothing."""
        path = sqlite_path(self.url) if self._engine is None else None
        return path is not None and not path.exists()

    @contextmanager
    def _reading(self, name: str | None = None) -> Iterator[Session]:
        """A read session; a row that cannot be decoded becomes one line naming the registry.

        ``name``: the concept the read is about, for the error a registry not created yet gives.
        """
        if name is not None and self._not_created():
            raise UnknownConceptError(
                f"concept {name!r} is not in the registry (known: none yet); train it with 'concept add'"
            )
        try:
            with Session(self.engine) as session:
                yield session
        except UNREADABLE as exc:
            raise self._damaged(exc) from None

    def _damaged(self, exc: BaseException) -> RegistryError:
        reason = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0][:200]
        return RegistryError(
            f"registry {self.display_url} holds a row that cannot be read ({type(exc).__name__}: {reason}); "
            "it was edited or damaged: restore it from a backup"
        )

    def _write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one write transaction, retrying while the database is busy."""
        deadline = time.monotonic() + WRITE_RETRY_SECONDS
        delay = 0.05
        while True:
            try:
                with self._write_session() as session:
                    return work(session)
            except (OperationalError, IntegrityError) as exc:
                if not _is_contention(exc):
                    raise RegistryError(f"registry {self.display_url} refused the write: {exc.orig}") from None
                if time.monotonic() > deadline:
                    raise RegistryError(
                        f"registry {self.display_url} stayed busy for {WRITE_RETRY_SECONDS:.0f} s; "
                        "another process holds it, try again"
                    ) from None
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
            except UNREADABLE as exc:  # a value out of the column's range, a damaged row read on the way
                raise self._damaged(exc) from None

    @contextmanager
    def _write_session(self) -> Iterator[Session]:
        with self.engine.connect() as connection:
            connection.execution_options(immediate=True)
            with connection.begin(), Session(bind=connection, expire_on_commit=False) as session:
                lock_for_write(connection)
                yield session
                session.flush()

    def _insert_version(self, session: Session, new: NewVersion, tensors: dict[str, np.ndarray], current: bool,
                        origin: dict[str, Any] | None = None) -> int:
        """The next version of ``new.concept`` with its blob, lineage and event; returns its number.

        ``current`` moves the concept's pointer to it (a concept without one always gets it).
        """
        check_name(new.concept)
        concept = session.scalar(select(Concept).where(Concept.name == new.concept))
        if concept is None:
            concept = Concept(name=new.concept, description=new.description, condition_schema=new.schema.to_json())
            session.add(concept)
            session.flush()
        elif schema_from_json(concept.condition_schema) != new.schema:
            raise RegistryError(
                f"concept {new.concept!r} takes {schema_from_json(concept.condition_schema).describe()}, "
                f"but this version's attribute {new.attribute!r} is {new.schema.describe()}; "
                "use another concept name"
            )
        frozen_ids = [self._version_row(session, self._concept_row(session, r.concept), r.number).id
                      for r in new.lineage]
        number = (session.scalar(select(func.max(Version.number)).where(Version.concept_id == concept.id)) or 0) + 1
        metadata = {
            "concept": new.concept,
            "version": number,
            "schema": new.schema.to_json(),
            "architecture": new.architecture,
            "architecture_config": new.architecture_config,
        }
        data = blobs.encode(tensors, {**metadata, "origin": origin} if origin else metadata)
        digest = blobs.sha256(data)
        if session.get(Blob, digest) is None:
            session.add(Blob(sha256=digest, size=len(data), data=data))
        version = Version(
            concept_id=concept.id, number=number, architecture=new.architecture,
            architecture_config=new.architecture_config, source=new.source,
            source_params=new.source_params, attribute=new.attribute, dataset_hash=new.dataset_hash,
            hyperparameters=new.hyperparameters, seed=new.seed, metrics=new.metrics,
            weights_sha256=digest, status="ready",
        )
        session.add(version)
        session.flush()
        session.add_all(Lineage(version_id=version.id, frozen_version_id=f) for f in frozen_ids)
        if current or session.get(CurrentVersion, concept.id) is None:
            self._point(session, concept.id, version.id)
        details: dict[str, Any] = {"lineage": [str(r) for r in new.lineage], "weights_sha256": digest}
        session.add(Event(kind="import" if origin else "add", concept=new.concept, version=number,
                          details={**details, "origin": origin} if origin else details))
        return number

    @staticmethod
    def _same_version(session: Session, new: NewVersion, tensors: dict[str, np.ndarray]) -> int | None:
        """The number of a version of ``new.concept`` here with the same architecture, config and tensors."""
        candidates = session.execute(
            select(Version.number, Version.architecture_config, Version.weights_sha256)
            .join(Concept, Concept.id == Version.concept_id)
            .where(Concept.name == new.concept, Version.architecture == new.architecture)
            .order_by(Version.number)
        ).all()
        wanted = blobs.tensor_digest(tensors)
        for number, config, sha in candidates:
            if dict(config) != dict(new.architecture_config):
                continue
            blob = session.get(Blob, sha)
            if blob is not None and blobs.tensor_digest(blobs.decode(bytes(blob.data), sha, sha[:12])) == wanted:
                return int(number)
        return None

    @staticmethod
    def _point(session: Session, concept_id: int, version_id: int) -> None:
        pointer = session.get(CurrentVersion, concept_id)
        if pointer is None:
            session.add(CurrentVersion(concept_id=concept_id, version_id=version_id))
        else:
            pointer.version_id = version_id

    @staticmethod
    def _concept_row(session: Session, name: str) -> Concept:
        concept = session.scalar(select(Concept).where(Concept.name == name))
        if concept is None:
            known = ", ".join(session.scalars(select(Concept.name).order_by(Concept.name))) or "none yet"
            raise UnknownConceptError(
                f"concept {name!r} is not in the registry (known: {known}); train it with 'concept add'"
            )
        return concept

    @staticmethod
    def _version_row(session: Session, concept: Concept, ref: str | int | None) -> Version:
        if ref is None:
            pointer = session.get(CurrentVersion, concept.id)
            if pointer is None:
                raise UnknownConceptError(f"concept {concept.name!r} has no versions yet")
            version = session.get(Version, pointer.version_id)
            if version is None:
                raise RegistryError(f"concept {concept.name!r} points at a version the registry does not hold; "
                                    "it was edited or damaged: restore it from a backup")
            return version
        if isinstance(ref, int) or str(ref).isdigit():
            version = session.scalar(
                select(Version).where(Version.concept_id == concept.id, Version.number == int(ref))
            )
            if version is None:
                numbers = session.scalars(
                    select(Version.number).where(Version.concept_id == concept.id).order_by(Version.number)
                ).all()
                raise UnknownConceptError(f"concept {concept.name!r} has no version {ref} ({_holds(numbers)})")
            return version
        alias = session.get(Alias, (concept.id, str(ref)))
        if alias is None:
            known = ", ".join(session.scalars(
                select(Alias.name).where(Alias.concept_id == concept.id).order_by(Alias.name)
            )) or "none"
            raise UnknownConceptError(f"concept {concept.name!r} has no alias {ref!r} (aliases: {known})")
        version = session.get(Version, alias.version_id)
        if version is None:
            raise RegistryError(f"alias {concept.name}@{ref} points at a version the registry does not hold; "
                                "it was edited or damaged: restore it from a backup")
        return version

    def _concept_info(self, session: Session, concept: Concept) -> ConceptInfo:
        pointer = session.get(CurrentVersion, concept.id)
        current = session.get(Version, pointer.version_id).number if pointer else None  # type: ignore[union-attr]
        count = session.scalar(select(func.count()).where(Version.concept_id == concept.id)) or 0
        return ConceptInfo(
            name=_typed(concept.name, str, "concepts.name"),
            description=_typed(concept.description, str, "concepts.description"),
            schema=schema_from_json(concept.condition_schema),
            current=current,
            versions=count,
            aliases=self._aliases(session, concept.id),
        )

    @staticmethod
    def _aliases(session: Session, concept_id: int) -> dict[str, int]:
        rows = session.execute(
            select(Alias.name, Version.number)
            .join(Version, Version.id == Alias.version_id)
            .where(Alias.concept_id == concept_id)
            .order_by(Alias.name)
        ).all()
        return {_typed(name, str, "aliases.name"): _typed(number, int, "versions.number") for name, number in rows}

    def _version_info(self, session: Session, concept: Concept, version: Version) -> VersionInfo:
        lineage = session.execute(
            select(Concept.name, Version.number)
            .join(Version, Version.concept_id == Concept.id)
            .join(Lineage, Lineage.frozen_version_id == Version.id)
            .where(Lineage.version_id == version.id)
            .order_by(Concept.name)
        ).all()
        pointer = session.get(CurrentVersion, concept.id)
        aliases = tuple(a for a, n in self._aliases(session, concept.id).items() if n == version.number)
        imported = session.scalar(select(Event.details).where(
            Event.kind == "import", Event.concept == concept.name, Event.version == version.number
        ).limit(1))
        return VersionInfo(
            concept=_typed(concept.name, str, "concepts.name"),
            number=_typed(version.number, int, "versions.number"),
            created_at=_utc(version.created_at),
            schema=schema_from_json(concept.condition_schema),
            architecture=_typed(version.architecture, str, "versions.architecture"),
            architecture_config=dict(_typed(version.architecture_config, dict, "versions.architecture_config")),
            source=_typed(version.source, str, "versions.source"),
            source_params=dict(_typed(version.source_params, dict, "versions.source_params")),
            attribute=_typed(version.attribute, str, "versions.attribute"),
            dataset_hash=_typed(version.dataset_hash, str, "versions.dataset_hash"),
            hyperparameters=dict(_typed(version.hyperparameters, dict, "versions.hyperparameters")),
            seed=_typed(version.seed, int, "versions.seed"),
            metrics=dict(_typed(version.metrics, dict, "versions.metrics")),
            weights_sha256=_typed(version.weights_sha256, str, "versions.weights_sha256"),
            status=_typed(version.status, str, "versions.status"),
            lineage=tuple(VersionRef(_typed(name, str, "concepts.name"), _typed(number, int, "versions.number"))
                          for name, number in lineage),
            aliases=aliases,
            is_current=pointer is not None and pointer.version_id == version.id,
            origin=_origin(imported["origin"]) if imported else None,
        )


def _typed(value: Any, kind: type, column: str) -> Any:
    """A column's value when it has the column's type (a hand edit may store any type in any SQLite column)."""
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{column} holds a {type(value).__name__}, not a {kind.__name__}")
    return value


def _origin(origin: dict[str, Any]) -> dict[str, Any]:
    """An import's origin as shown: where it came from with any password hidden (events written by older
    releases may hold a registry URL as it was typed)."""
    return {key: redact_text(value) if key == "from" and isinstance(value, str) else value
            for key, value in dict(origin).items()}


def _utc(moment: datetime) -> datetime:
    """Timestamps are written in UTC; SQLite hands them back naive, so say so again."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


CONTENTION_SQLSTATES = ("40001", "40P01", "55P03")
"""PostgreSQL: serialization failure, deadlock, lock not available (lock_timeout)."""


def _is_contention(exc: Exception) -> bool:
    """True for errors another writer causes: a locked database, or a racing version number."""
    original = getattr(exc, "orig", exc)
    if getattr(original, "sqlstate", None) in CONTENTION_SQLSTATES:
        return True
    message = str(original).lower()
    if isinstance(exc, IntegrityError):
        return "uq_versions_concept_number" in message or "versions.concept_id, versions.number" in message
    return "locked" in message or "busy" in message or "could not serialize" in message


def _holds(numbers: Sequence[int]) -> str:
    """``it has version 1``, ``it has versions 1 to 3``, ``it has no versions``: what a reference may name."""
    if not numbers:
        return "it has no versions"
    if len(numbers) == 1:
        return f"it has version {numbers[0]}"
    return f"it has versions {numbers[0]} to {numbers[-1]}"
