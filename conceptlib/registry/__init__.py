"""The concept registry: versioned weights, lineage, aliases and an event log in one database."""

from conceptlib.registry.api import (
    ConceptInfo,
    EventInfo,
    NewVersion,
    Registry,
    VersionInfo,
    VersionRef,
    split_ref,
)

__all__ = ["ConceptInfo", "EventInfo", "NewVersion", "Registry", "VersionInfo", "VersionRef", "split_ref"]
