"""The words the repository speaks in: a version's state, a row of the index, what one apply did."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# name -> version -> package path
Desired = dict[str, dict[int, str]]
UNREADABLE = "unreadable: "  # a fingerprint's note: the package's files cannot be read now
RELOAD_FAILED = "reload failed: "  # the reason of a READY version whose new files did not load


class ModelState(StrEnum):
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index (the Open Inference Protocol's repository extension);
    ``version`` is None for a model directory whose error names no version."""

    name: str
    version: int | None
    state: ModelState
    reason: str = ""

    @property
    def failed(self) -> bool:
        """Its last load failed: it never loaded, or its rewritten files did not (the old ones
        still serve)."""
        return self.state is ModelState.UNAVAILABLE or (
            self.state is ModelState.READY and self.reason.startswith(RELOAD_FAILED)
        )


@dataclass
class ApplyReport:
    """What one :meth:`ModelRegistry.apply` did."""

    loaded: list[tuple[str, int]] = field(default_factory=list)
    unloaded: list[tuple[str, int]] = field(default_factory=list)
    failed: dict[tuple[str, int], str] = field(default_factory=dict)


class ForwardedLoadError(RuntimeError):
    """A load that failed in the process that loads the engines (the engine process of the
    shared topology), which logged and counted it; this process only mirrors the outcome."""
