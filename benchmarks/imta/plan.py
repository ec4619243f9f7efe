"""The runs of the IMTA factorial: arms x seeds, their training command lines and their order.

One source of truth for the command lines of ``configs/imta/README.md``: stage 1 trains the
network (plain, with Gradient Equilibrium, or with GE's per-block learning-rate factors alone);
stage 2 freezes a finished stage-1 network of the same seed and trains new ISC exit heads with the
official one-for-all KD loss (IMTA sections 3.1-3.3, the official two-stage procedure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGE1_CONFIG = "configs/imta/stage1.yaml"
STAGE2_CONFIG = "configs/imta/stage2_isc_kd.yaml"
PRIMARY = ("ge+isc_kd", "plain")  # IMTA against plain multi-exit training: the verdict's contrast
DEFAULT_SEEDS = (0, 1, 2)  # seed 2 is the optional third seed (docs/imta.md, "Seeds")


class PlanError(ValueError):
    """An unknown arm or seed list; the message names the value and what is allowed."""


@dataclass(frozen=True)
class Arm:
    """One arm of the factorial. ``parent``: the stage-1 arm whose network stage 2 builds on."""

    name: str
    label: str
    config: str
    flags: tuple[str, ...] = ()
    parent: str | None = None

    @property
    def stage(self) -> int:
        return 1 if self.parent is None else 2


ARMS = (
    Arm("plain", "plain multi-exit CE", STAGE1_CONFIG),
    Arm("ge", "GE", STAGE1_CONFIG, ("--ge",)),
    Arm("lr_scaled", "block lr x 1/(K-i) (control)", STAGE1_CONFIG, ("--lr-scaled",)),
    Arm("ge+isc_kd", "GE, then ISC + KD heads (IMTA)", STAGE2_CONFIG, parent="ge"),
    Arm("plain+isc_kd", "plain, then ISC + KD heads", STAGE2_CONFIG, parent="plain"),
)
ARM_NAMES = tuple(a.name for a in ARMS)
BY_NAME = {a.name: a for a in ARMS}


@dataclass(frozen=True)
class Run:
    """One training run: an arm at one seed, in ``<runs_dir>/<arm>/seed<seed>``."""

    arm: Arm
    seed: int

    @property
    def key(self) -> str:
        return f"{self.arm.name}/seed{self.seed}"

    def run_dir(self, runs_dir: Path) -> Path:
        return runs_dir / self.arm.name / f"seed{self.seed}"

    def parent(self) -> Run | None:
        """The stage-1 run this stage-2 run reads (same seed), or None for a stage-1 run."""
        return None if self.arm.parent is None else Run(BY_NAME[self.arm.parent], self.seed)

    def train_argv(
        self, runs_dir: Path, overrides: tuple[str, ...] = (), threads: int | None = None
    ) -> list[str]:
        """``python -m training`` arguments that start, resume or (when finished) skip the run.

        ``threads`` sets torch's threads (a resume may change it: the results do not depend on
        it beyond float rounding); ``overrides`` come last so that they win (e.g. ``--epochs 1``
        for a smoke test).
        """
        argv = ["train", "--config", self.arm.config, "--set", f"seed={self.seed}"]
        argv += ["--set", f"threads={threads}"] if threads else []
        argv += ["--run-dir", str(self.run_dir(runs_dir)), *self.arm.flags]
        if (parent := self.parent()) is not None:
            argv += ["--init-from", str(parent.run_dir(runs_dir) / "last.pt")]
        return [*argv, "--resume", "--no-progress", *overrides]


def plan(seeds: tuple[int, ...] = DEFAULT_SEEDS, arms: tuple[str, ...] = ARM_NAMES) -> list[Run]:
    """Every run, in launch order: seed by seed (so that an early stop leaves whole seeds), and
    within a seed the stage-1 runs before the stage-2 runs that read their networks."""
    unknown = [a for a in arms if a not in BY_NAME]
    if unknown:
        raise PlanError(f"unknown arm(s) {unknown}; known: {list(ARM_NAMES)}")
    missing = sorted({p for a in arms if (p := BY_NAME[a].parent) is not None} - set(arms))
    if missing:
        raise PlanError(f"stage-2 arms need their stage-1 arm(s) {missing} in the plan as well")
    if not seeds or len(set(seeds)) != len(seeds):
        raise PlanError(f"seeds must be distinct and at least one: {list(seeds)}")
    chosen = [a for a in ARMS if a.name in arms]
    return [Run(a, s) for s in seeds for stage in (1, 2) for a in chosen if a.stage == stage]


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise PlanError(f"--seeds must be comma-separated integers, got {text!r}") from None
