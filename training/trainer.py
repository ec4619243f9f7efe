"""A whole training run: stages, epochs, evaluation on the validation split, checkpoints, resume.

Recipes (IMTA, ``../shared/IMTA.md``):

- ``joint``: one stage; the configured model (ISC or not) trained end to end with the CE sum or
  OFA KD (teacher = its own last exit, detached), with or without GE.
- ``two-stage`` (the official procedure): stage 1 trains the plain network (no ISC) with GE and
  CE at every exit; stage 2 freezes its backbone (weights and BatchNorm statistics), builds new
  exit heads (ISC if configured) and trains them with OFA KD, the teacher being the frozen stage-1
  network's last exit.

Rank 0 alone evaluates, logs (``log.jsonl``) and writes checkpoints; all ranks see the same data
order through ``DistributedSampler`` and the same augmentation seeds per (epoch, rank).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from models import create_model
from models.multi_exit import MultiExitNet
from training.checkpoint import (
    LAST,
    STAGE1,
    load_checkpoint,
    load_trained,
    model_spec,
    reached,
    rebuild_model,
    rng_state,
    save_atomic,
    set_rng_state,
)
from training.config import ConfigError, TrainConfig, config_to_dict
from training.data import Dataset, load_dataset, on_device, train_batches
from training.equilibrium import enable_gradient_equilibrium
from training.loop import Criterion, collect_logits, exit_accuracy, train_one_epoch
from training.losses import multi_exit_ce, ofa_kd_loss
from training.schedule import lr_factor
from training.swa import averaged, recompute_batchnorm

LOG = "log.jsonl"
STAGE2_NEW = ("linear", "isc_embed")  # exit-head parts that stage 2 of the two-stage recipe trains
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


@dataclass(frozen=True)
class DistInfo:
    """Process placement under torchrun (read from its environment at the CLI edge)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    # Measured (python -m training.speed): on an H200, batch 256 / 1024 bf16 steps ran 1.7x / 2.2x
    # faster with NHWC weights; on this CPU they ran at 58% of the default layout's speed.
    return cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")


def pick_amp(cfg: TrainConfig, device: torch.device) -> str:
    # "auto" keeps fp32 on the CPU: bf16 is opt-in there (faster on this CPU, see docs/training.md,
    # but not on every CPU: it depends on native bf16 support).
    if cfg.amp == "auto":
        return "bf16" if device.type == "cuda" else "none"
    return cfg.amp


@dataclass
class StagePlan:
    model: MultiExitNet
    criterion: Criterion
    frozen: list[nn.Module]


def build_stage(
    cfg: TrainConfig, stage: str, num_classes: int, run_dir: Path, device: torch.device
) -> StagePlan:
    """The model, loss and frozen parts of one stage (see the module docstring)."""
    kwargs: dict[str, Any] = {**cfg.model.kwargs, "num_classes": num_classes}
    if stage == "stage1":
        model = create_model(cfg.model.name, **kwargs)
        enable_gradient_equilibrium(model, cfg.ge)
        return StagePlan(model.to(device), lambda z, y, x: multi_exit_ce(z, y), [])
    isc = {"isc": cfg.model.isc, "isc_detach": cfg.model.isc_detach} if cfg.model.isc else {}
    model = create_model(cfg.model.name, **kwargs, **isc).to(device)
    if stage == "joint":
        enable_gradient_equilibrium(model, cfg.ge)
        if cfg.kd and cfg.kd_teacher is not None:
            external = frozen_teachers(cfg, num_classes, device)
            return StagePlan(model, kd_from_frozen(external, cfg, teach_last=True), [])
        if cfg.kd:
            t, g = cfg.kd_temperature, cfg.kd_weight
            return StagePlan(model, lambda z, y, x: ofa_kd_loss(z, y, t, g), [])
        return StagePlan(model, lambda z, y, x: multi_exit_ce(z, y), [])
    # stage2 (official main_IMTA.py / msdnet_imta.py): the whole stage-1 network is frozen, blocks
    # and the exit heads' conv bodies alike; new final linear layers (with the ISC embedding) read
    # its pooled exit features; the teacher is the frozen network's own last exit.
    teacher = freeze(rebuild_model(load_checkpoint(run_dir / STAGE1)).to(device))
    new_parts = [m for head in model.exits for name, m in head.named_children() if name in STAGE2_NEW]
    new_ids = {id(p) for m in new_parts for p in m.parameters()}
    reused = {
        k: v
        for k, v in teacher.state_dict().items()
        if not (k.startswith("exits.") and k.split(".")[2] in STAGE2_NEW)
    }
    model.load_state_dict(reused, strict=False)
    for p in model.parameters():
        p.requires_grad_(id(p) in new_ids)
    # Frozen parts also keep their BatchNorm statistics (eval mode); the official code leaves them
    # in train mode, so its "frozen" features drift with the batch statistics.
    frozen = [m for name, m in model.named_children() if name != "exits"]
    frozen += [m for head in model.exits for name, m in head.named_children() if name not in STAGE2_NEW]
    if not cfg.kd:
        return StagePlan(model, lambda z, y, x: multi_exit_ce(z, y), frozen)
    return StagePlan(model, kd_from_frozen(teacher, cfg, teach_last=False), frozen)


def freeze(model: MultiExitNet) -> MultiExitNet:
    """``model`` with no parameter requiring grad, in eval mode (BatchNorm statistics fixed)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def kd_from_frozen(teacher: nn.Module, cfg: TrainConfig, *, teach_last: bool) -> Criterion:
    """OFA KD whose soft targets are a frozen ``teacher``'s last exit on the same batch (a
    :class:`MultiExitNet` or a :class:`TeacherEnsemble`: both return a list of ``[N, C]`` logits)."""
    t, g = cfg.kd_temperature, cfg.kd_weight

    def criterion(z: list[Tensor], y: Tensor, x: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_logits = teacher(x)[-1]
        return ofa_kd_loss(z, y, t, g, teacher=teacher_logits, teach_last=teach_last)

    return criterion


def check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """An exact resume needs the same config, apart from :data:`RESUME_FREE_KEYS`.

    ``epochs`` may grow when the schedule is constant (an SWA phase): no epoch's learning rate
    depends on the total, so running 20 epochs and then extending to 40 is the 40-epoch run.
    """

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(
                flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "kwargs" else {prefix + k: v}
            )
        return out

    old, new = flat(saved), flat(config_to_dict(cfg))
    # Keys absent from the saved config were added to the code later: their defaults apply.
    free = set(RESUME_FREE_KEYS)
    extendable = cfg.recipe == "joint" and cfg.optim.schedule == "constant"
    if extendable and isinstance(old.get("epochs"), int) and cfg.epochs >= old["epochs"]:
        free.add("epochs")
    diff = sorted(k for k in old if k not in free and old.get(k) != new.get(k))
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise ConfigError(f"cannot resume: the config differs from the checkpoint's ({detail})")


SPLIT_KEYS = ("source", "n_val", "n_test", "split_seed", "synthetic_size", "synthetic_classes")


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


class TeacherEnsemble(nn.Module):
    """Several frozen teachers as one: ``forward(x)`` returns ``[mean of their last exits' logits]``
    (``[N, C]``), the list shape a :class:`MultiExitNet` gives. Averaging logits makes the soft
    target ``softmax(mean / T)`` the renormalised geometric mean of the teachers' tempered softmaxes
    (a product of experts). Distilling an ensemble into one network is Hinton et al.'s setting
    (2015); the shipped model and a born-again one, together, score 0.3-1.0 points per exit over
    the better of the two on validation (docs/training.md)."""

    def __init__(self, teachers: list[MultiExitNet]) -> None:
        super().__init__()
        self.teachers = nn.ModuleList(teachers)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [torch.stack([t(x)[-1].float() for t in self.teachers]).mean(dim=0)]


def frozen_teachers(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    """``cfg.kd_teacher``'s network(s) (any registered architecture), frozen in eval mode: each from
    a finished run's checkpoint or an exported model package, trained on this run's split; several
    are averaged into one :class:`TeacherEnsemble`."""
    assert cfg.kd_teacher is not None
    paths = [cfg.kd_teacher] if isinstance(cfg.kd_teacher, str) else cfg.kd_teacher
    nets: list[MultiExitNet] = []
    for path in paths:
        teacher = load_trained(Path(path), "kd_teacher")
        check_finished_on_split(
            teacher.config, teacher.complete, teacher.reached, "kd_teacher", path, cfg
        )
        if len(teacher.classes) != num_classes:
            raise ConfigError(
                f"kd_teacher {path} predicts {len(teacher.classes)} classes; "
                f"this run's data has {num_classes}"
            )
        net = freeze(teacher.model.to(device))
        if use_channels_last(cfg, device):  # the student's layout: the teacher's convs run NHWC too
            net.to(memory_format=torch.channels_last)
        nets.append(net)
    return nets[0] if len(nets) == 1 else TeacherEnsemble(nets)


def initial_weights(cfg: TrainConfig) -> dict[str, Tensor]:
    """The model state of ``cfg.init_from``, checked to hold this run's model and split."""
    assert cfg.init_from is not None
    blob = same_split_checkpoint(cfg.init_from, "init_from", cfg)
    if blob["config"]["model"] != config_to_dict(cfg)["model"]:
        raise ConfigError(
            f"init_from {cfg.init_from} holds another model ({blob['config']['model']}); "
            f"this run's is {config_to_dict(cfg)['model']}"
        )
    state: dict[str, Tensor] = blob["model"]
    return state


def summarize(record: dict[str, Any]) -> str:
    """One human-readable line per epoch (the progress bar is gone once the epoch ends)."""
    val = " ".join(f"{100 * a:.1f}" for a in record["val_exit_acc"])
    return (
        f"{record['stage']} epoch {record['epoch']}: loss {record['loss']:.4f} lr {record['lr']:.4f} "
        f"{record['images_per_s']:.0f} img/s {record['epoch_s']:.0f}s val acc per exit [{val}]"
    )


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)


def run_training(
    cfg: TrainConfig, *, resume: bool = False, info: DistInfo | None = None
) -> dict[str, Any]:
    """Train according to ``cfg``; returns ``{"complete": bool, "history": [...], "model": ...}``.

    ``model`` is this process's trained network (absent when nothing was left to train).

    Raises:
        ConfigError, DataError, TrainingDiverged, CheckpointError.
    """
    info = info or DistInfo()
    run_dir = Path(cfg.run_dir).expanduser()
    stages = ["joint"] if cfg.recipe == "joint" else ["stage1", "stage2"]
    epochs_of = {"joint": cfg.epochs, "stage1": cfg.epochs, "stage2": cfg.stage2_epochs}
    blob: dict[str, Any] | None = None
    start_stage, start_epoch, history = 0, 0, []
    if (run_dir / LAST).is_file():
        if not resume:
            raise ConfigError(
                f"{run_dir} already holds a checkpoint: pass --resume, or another --run-dir"
            )
        blob = load_checkpoint(run_dir / LAST)
        check_resumable(blob["config"], cfg)
        start_stage, start_epoch, history = stages.index(blob["stage"]), blob["epoch"], blob["history"]
        if start_epoch >= epochs_of[stages[start_stage]]:
            if blob["stage"] == "stage1" and not (run_dir / STAGE1).is_file() and info.is_main:
                save_atomic({"arch": blob["arch"], "model": blob["model"]}, run_dir / STAGE1)
            if info.world_size > 1:
                dist.barrier()  # every rank reads stage1.pt when stage 2 starts
            start_stage, start_epoch, blob = start_stage + 1, 0, None
    if start_stage >= len(stages):
        return {"complete": True, "history": history}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg, info)
    amp = pick_amp(cfg, device)
    data: Dataset = load_dataset(cfg.data)
    train_split = on_device(data.train, device)  # a GPU gathers and augments its own batches
    run_dir.mkdir(parents=True, exist_ok=True)
    for si in range(start_stage, len(stages)):
        stage = stages[si]
        seed_everything(cfg.seed + si, cfg.deterministic)
        plan = build_stage(cfg, stage, len(data.classes), run_dir, device)
        if use_channels_last(cfg, device):  # convs then run NHWC (their inputs follow the weights)
            plan.model.to(memory_format=torch.channels_last)
        params = [p for p in plan.model.parameters() if p.requires_grad]
        o = cfg.optim
        optimizer = torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
        steps = len(data.train) // info.world_size // cfg.batch_size
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(o, epochs_of[stage], steps))
        scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        first = 0
        if blob is None and si == 0 and cfg.init_from is not None:
            plan.model.load_state_dict(initial_weights(cfg))
        if blob is not None and si == start_stage:
            # A finished SWA run's "model" is the average; training goes on from the last iterate.
            plan.model.load_state_dict(blob.get("last_iterate", blob["model"]))
            optimizer.load_state_dict(blob["optimizer"])
            scheduler.load_state_dict(blob["scheduler"])
            if blob["scaler"]:  # empty when saved without fp16: a switch to fp16 starts it fresh
                scaler.load_state_dict(blob["scaler"])
            set_rng_state(blob["rng"])
            first = start_epoch
        # SWA (training/swa.py) averages the last stage's weights from epoch cfg.swa_start on.
        swa = averaged(plan.model) if cfg.swa_start is not None else None  # joint only (config)
        if swa is not None and blob is not None and si == start_stage and "swa" in blob:
            swa.load_state_dict(blob["swa"])
        final = plan.model  # what the checkpoint's "model" holds: the SWA average once it is done
        net: nn.Module = plan.model
        if info.world_size > 1:
            net = DistributedDataParallel(
                plan.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        for epoch in range(first, epochs_of[stage]):
            if cfg.stop_after is not None and len(history) >= cfg.stop_after:
                return {"complete": False, "history": history, "model": plan.model}
            batches, n = train_batches(
                train_split, cfg.data, cfg.batch_size, epoch, cfg.seed + si, info.rank, info.world_size
            )
            stats = train_one_epoch(
                net, batches, n, plan.criterion, optimizer, scheduler, scaler,
                device=device, amp=amp, max_bad_steps=cfg.max_bad_steps,
                progress=cfg.progress and info.is_main, frozen=plan.frozen,
                description=f"{stage} {epoch + 1}/{epochs_of[stage]}",
            )  # fmt: skip
            last_epoch = epoch + 1 == epochs_of[stage]
            swa_extra: dict[str, Any] = {}
            if swa is not None and cfg.swa_start is not None and epoch + 1 >= cfg.swa_start:
                swa.update_parameters(plan.model)
                if last_epoch:  # every rank re-estimates on the whole split: identical models
                    bn_start = time.perf_counter()
                    bn_batches, _ = train_batches(
                        train_split, cfg.data, cfg.batch_size, epoch, cfg.seed + si
                    )
                    final = recompute_batchnorm(swa, bn_batches, device=device, amp=amp)
                    swa_extra = {
                        "swa_averaged": int(swa.n_averaged),
                        "swa_bn_s": time.perf_counter() - bn_start,
                    }
            if info.is_main:
                val = collect_logits(final, data.val, cfg.data.mean, cfg.data.std,
                                     batch_size=cfg.eval_batch_size, device=device, amp=amp)  # fmt: skip
                record = {
                    "stage": stage, "epoch": epoch + 1, "loss": stats.loss, "lr": stats.lr,
                    "train_exit_acc": stats.exit_accuracy,
                    "val_exit_acc": exit_accuracy(val, data.val.y),
                    "images_per_s": stats.images_per_second * info.world_size,
                    "epoch_s": stats.seconds + swa_extra.get("swa_bn_s", 0.0),
                    "skipped_steps": stats.skipped_steps,
                }  # fmt: skip
                if final is not plan.model:  # the SWA average; the last iterate for comparison
                    iterate = collect_logits(
                        plan.model, data.val, cfg.data.mean, cfg.data.std,
                        batch_size=cfg.eval_batch_size, device=device, amp=amp,
                    )  # fmt: skip
                    record.update(swa_extra, iterate_val_exit_acc=exit_accuracy(iterate, data.val.y))
                history.append(record)
                with open(run_dir / LOG, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(summarize(record), flush=True)
                extra_state: dict[str, Any] = {}
                if swa is not None:
                    extra_state["swa"] = swa.state_dict()
                if final is not plan.model:
                    extra_state["last_iterate"] = plan.model.state_dict()
                save_atomic(
                    {
                        **extra_state,
                        "arch": model_spec(final), "model": final.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "rng": rng_state(), "stage": stage,
                        "epoch": epoch + 1, "config": config_to_dict(cfg), "history": history,
                        "classes": data.classes, "data_info": data.info,
                        "complete": si == len(stages) - 1 and last_epoch,
                    },
                    run_dir / LAST,
                )  # fmt: skip
            else:
                history.append({"stage": stage, "epoch": epoch + 1})
            if info.world_size > 1:
                dist.barrier()
        if stage == "stage1" and info.is_main:
            save_atomic(
                {"arch": model_spec(plan.model), "model": plan.model.state_dict()}, run_dir / STAGE1
            )
        if info.world_size > 1:
            dist.barrier()
    return {"complete": True, "history": history, "model": final}
