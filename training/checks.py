"""What a run refuses: a resume under another config, and weights from an unfinished run, from
another data split or of another network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from training.checkpoint import load_checkpoint, reached
from training.config import ConfigError, TrainConfig, config_to_dict

# Run-time knobs that may change when a run is resumed: they leave the saved state alone (``amp``
# and ``threads`` change the arithmetic, so a resume that changes them is no longer bit-exact).
# ``init_from`` is read only when a run starts; a resume continues from run_dir/last.pt, so the
# starting weights' path may differ, e.g. for a run carried to another machine and back.
RESUME_FREE_KEYS = {
    "stop_after",
    "progress",
    "threads",
    "run_dir",
    "data.path",
    "data.cache_dir",
    "max_bad_steps",
    "eval_batch_size",
    "amp",
    "init_from",
}

SPLIT_KEYS = ("source", "n_val", "n_test", "split_seed", "synthetic_size", "synthetic_classes")


def check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """An exact resume needs the same config, apart from :data:`RESUME_FREE_KEYS`.

    ``epochs`` may grow when the schedule is constant (an SWA phase): no epoch's learning rate
    depends on the total, so running 20 epochs and then extending to 40 is the 40-epoch run.
    Keys absent from the saved config are newer than the checkpoint: their defaults apply.
    """
    old, new = _flat(saved), _flat(config_to_dict(cfg))
    free = set(RESUME_FREE_KEYS)
    extendable = cfg.recipe == "joint" and cfg.optim.schedule == "constant"
    if extendable and isinstance(old.get("epochs"), int) and cfg.epochs >= old["epochs"]:
        free.add("epochs")
    if cfg.recipe != "two-stage":
        free.add("stage2_epochs")  # only the two-stage recipe reads it
    diff = sorted(k for k in old if k not in free and old.get(k) != new.get(k))
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise ConfigError(f"cannot resume: the config differs from the checkpoint's ({detail})")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        nested = isinstance(v, dict) and k != "kwargs"
        out.update(_flat(v, f"{prefix}{k}.") if nested else {prefix + k: v})
    return out


def same_split_checkpoint(path: str, role: str, cfg: TrainConfig) -> dict[str, Any]:
    """The checkpoint at ``path`` after checking that its run finished (a chain of phases built on
    a run stopped by ``--stop-after`` would silently start from partial weights) and that it was
    trained on this run's split; ``role`` names the config key in the error."""
    blob = load_checkpoint(Path(path).expanduser())
    check_finished_on_split(blob["config"], blob.get("complete", False), reached(blob), role, path, cfg)
    return blob


def check_finished_on_split(
    config: dict[str, Any], complete: bool, stood: str, role: str, path: str, cfg: TrainConfig
) -> None:
    """Refuse the weights of an unfinished run (stopped at ``stood``) or of another split."""
    if not complete:
        raise ConfigError(
            f"{role} {path} is from an unfinished run (stopped after {stood}); "
            "finish that run first (train again with --resume)"
        )
    check_same_split(config["data"], role, path, cfg)


def check_same_split(theirs: dict[str, Any], role: str, path: str, cfg: TrainConfig) -> None:
    """Another split would put this run's validation or test images in their training set."""
    ours = config_to_dict(cfg)["data"]
    diff = [k for k in SPLIT_KEYS if k in theirs and theirs[k] != ours.get(k)]
    if diff:
        detail = ", ".join(f"data.{k}: {theirs[k]!r} there, {ours.get(k)!r} here" for k in diff)
        raise ConfigError(f"{role} {path} was trained on another split ({detail})")


def initial_weights(cfg: TrainConfig) -> dict[str, Tensor]:
    """The model state of ``cfg.init_from``, checked to hold this run's model and split."""
    assert cfg.init_from is not None  # the caller's branch condition
    blob = same_split_checkpoint(cfg.init_from, "init_from", cfg)
    if blob["config"]["model"] != config_to_dict(cfg)["model"]:
        raise ConfigError(
            f"init_from {cfg.init_from} holds another model ({blob['config']['model']}); "
            f"this run's is {config_to_dict(cfg)['model']}"
        )
    state: dict[str, Tensor] = blob["model"]
    return state


def frozen_network(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    """``{"arch", "model"}`` of ``cfg.init_from`` for recipe stage2: a finished run on this split
    whose network is this run's architecture without ISC (stage 2's teacher is its last exit,
    whose linear layer must read the pooled feature alone)."""
    assert cfg.init_from is not None  # the config requires it for recipe stage2
    blob = same_split_checkpoint(cfg.init_from, "init_from", cfg)
    arch = blob["arch"]
    theirs = {k: v for k, v in arch["kwargs"].items() if k not in ("isc", "isc_detach")}
    ours = {**cfg.model.kwargs, "num_classes": num_classes}
    if arch["kwargs"].get("isc") or arch["name"] != cfg.model.name or theirs != ours:
        raise ConfigError(
            f"init_from {cfg.init_from} holds {arch['name']} {arch['kwargs']}; stage 2 needs "
            f"{cfg.model.name} {ours} without ISC"
        )
    return {"arch": arch, "model": blob["model"]}
