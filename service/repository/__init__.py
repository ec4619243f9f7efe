"""The model repository: what each process serves, by name and version, and how it changes."""

from service.repository.registry import (
    ApplyReport,
    Desired,
    IndexEntry,
    ModelRegistry,
    ModelState,
    ServedVersion,
)

__all__ = ["ApplyReport", "Desired", "IndexEntry", "ModelRegistry", "ModelState", "ServedVersion"]
