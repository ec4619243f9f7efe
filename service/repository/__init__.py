"""The model repository: what each process serves, by name and version, and how it changes."""

from service.repository.registry import ModelRegistry, ServedVersion
from service.repository.states import ApplyReport, Desired, IndexEntry, ModelState

__all__ = ["ApplyReport", "Desired", "IndexEntry", "ModelRegistry", "ModelState", "ServedVersion"]
