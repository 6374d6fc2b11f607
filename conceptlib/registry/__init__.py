"""The concept registry: versioned weights, lineage, aliases and an event log in one database."""

from conceptlib.registry.api import (
    ConceptInfo,
    EventInfo,
    NewVersion,
    Registry,
    VersionInfo,
    VersionRef,
)

__all__ = ["ConceptInfo", "EventInfo", "NewVersion", "Registry", "VersionInfo", "VersionRef"]
