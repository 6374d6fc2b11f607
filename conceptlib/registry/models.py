"""The registry's tables (SQLAlchemy 2.0 typed ORM).

Versions are append-only; the current version of a concept is a row in ``current_versions`` so
that rollback moves a pointer and never rewrites history (and so the schema has no circular
foreign key, which PostgreSQL and SQLite both create without ALTER TABLE tricks).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Blob(Base):
    """Safetensors bytes, addressed by their sha256 (identical weights are stored once)."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Concept(Base):
    __tablename__ = "concepts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    condition_schema: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("concept_id", "number", name="uq_versions_concept_number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    concept_id: Mapped[int] = mapped_column(ForeignKey("concepts.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    architecture: Mapped[str] = mapped_column(String(128))
    architecture_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(128))
    source_params: Mapped[dict[str, Any]] = mapped_column(JSON)
    attribute: Mapped[str] = mapped_column(String(128))
    dataset_hash: Mapped[str] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    weights_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    status: Mapped[str] = mapped_column(String(32), default="ready")


class CurrentVersion(Base):
    """The pointer that rollback moves: one row per concept that has a version."""

    __tablename__ = "current_versions"
    concept_id: Mapped[int] = mapped_column(ForeignKey("concepts.id"), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))


class Lineage(Base):
    """Version -> each exact frozen version it was trained with (continual learning, paper 3.3)."""

    __tablename__ = "lineage"
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)
    frozen_version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), primary_key=True)


class Alias(Base):
    __tablename__ = "aliases"
    concept_id: Mapped[int] = mapped_column(ForeignKey("concepts.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))


class Event(Base):
    """Audit log: add, rollback, alias, unalias, with time and details."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    concept: Mapped[str] = mapped_column(String(128))
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
