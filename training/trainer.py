"""A whole training run: its stages, epochs, evaluation on the validation split, checkpoints and
resume (what each stage trains: ``training/stages.py``).

Rank 0 alone evaluates, logs (``log.jsonl``) and writes checkpoints; all ranks see the same data
order through ``DistributedSampler`` and the same augmentation seeds per (epoch, rank).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models.multi_exit import MultiExitNet
from training.augment import normalize
from training.blocks import GradNormMeter, block_groups, group_norms, head_groups
from training.checkpoint import (
    LAST,
    STAGE1,
    load_checkpoint,
    model_spec,
    rng_state,
    save_atomic,
    set_rng_state,
)
from training.checks import check_resumable, frozen_network, initial_weights
from training.config import ConfigError, TrainConfig, config_to_dict
from training.data import Dataset, Split, load_dataset, on_device, train_batches
from training.device import DistInfo, pick_amp, pick_device, use_channels_last
from training.lookahead import Lookahead
from training.loop import EpochStats, collect_logits, exit_accuracy, train_one_epoch
from training.schedule import lr_factor
from training.stages import StagePlan, build_stage, make_optimizer
from training.swa import averaged, recompute_batchnorm

LOG = "log.jsonl"


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)


def summarize(record: dict[str, Any]) -> str:
    """One human-readable line per epoch (the progress bar is gone once the epoch ends)."""
    val = " ".join(f"{100 * a:.1f}" for a in record["val_exit_acc"])
    return (
        f"{record['stage']} epoch {record['epoch']}: loss {record['loss']:.4f} lr {record['lr']:.4f} "
        f"{record['images_per_s']:.0f} img/s {record['epoch_s']:.0f}s val acc per exit [{val}]"
    )


@dataclass
class StartPoint:
    """Where a run (re)starts: the stage's index, the epoch done in it, the history so far and,
    when resuming mid-stage, the checkpoint to continue from."""

    stage: int = 0
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    blob: dict[str, Any] | None = None


def start_point(cfg: TrainConfig, run_dir: Path, resume: bool, info: DistInfo) -> StartPoint:
    """Read ``run_dir/last.pt`` if there is one (refused without ``resume`` or under another
    config). A finished stage 1 moves the start to stage 2's beginning."""
    stages = cfg.stages()
    if not (run_dir / LAST).is_file():
        return StartPoint()
    if not resume:
        raise ConfigError(f"{run_dir} already holds a checkpoint: pass --resume, or another --run-dir")
    blob = load_checkpoint(run_dir / LAST)
    check_resumable(blob["config"], cfg)
    start = StartPoint(stages.index(blob["stage"]), blob["epoch"], blob["history"], blob)
    if start.epoch < cfg.stage_epochs(blob["stage"]):
        return start
    if blob["stage"] == "stage1" and not (run_dir / STAGE1).is_file() and info.is_main:
        save_atomic({"arch": blob["arch"], "model": blob["model"]}, run_dir / STAGE1)
    if info.world_size > 1:
        dist.barrier()  # every rank reads stage1.pt when stage 2 starts
    return StartPoint(start.stage + 1, 0, start.history, None)


@dataclass
class StageState:
    """Everything one stage trains with; ``final`` is what its checkpoint's "model" holds (the
    SWA average once that is done, else the model)."""

    plan: StagePlan
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    swa: torch.optim.swa_utils.AveragedModel | None
    final: MultiExitNet
    lookahead: Lookahead | None = None


def data_dependent_init(
    model: MultiExitNet, cfg: TrainConfig, train: Split, device: torch.device
) -> None:
    """A fresh network that sets some weights from the data (WideNet's whitening stem) gets its
    first 5,000 training images, normalised; seeded runs stay exactly repeatable."""
    init = getattr(model, "init_from_data", None)
    if callable(init):
        init(normalize(train.x[:5000].to(device), cfg.data.mean, cfg.data.std))


def prepare_stage(
    cfg: TrainConfig, stage: str, first: bool, start: StartPoint, train: Split,
    num_classes: int, steps_per_epoch: int, run_dir: Path, device: torch.device, amp: str,
) -> StageState:  # fmt: skip
    """Build the stage's model, loss and optimiser; load ``init_from`` (a run's first stage) or
    the resume checkpoint (``start.blob``, the stage being resumed)."""
    plan = build_stage(cfg, stage, num_classes, run_dir, device)
    if stage != "stage2":
        data_dependent_init(plan.model, cfg, train, device)
    if use_channels_last(cfg, device):  # convs then run NHWC (their inputs follow the weights)
        plan.model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, plan.model)
    schedule = lr_factor(cfg.optim, cfg.stage_epochs(stage), steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    blob = start.blob if first else None
    if blob is None and first and cfg.init_from is not None and stage != "stage2":
        plan.model.load_state_dict(initial_weights(cfg))
    if blob is not None:
        # A finished SWA run's "model" is the average; training goes on from the last iterate.
        plan.model.load_state_dict(blob.get("last_iterate", blob["model"]))
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        if blob["scaler"]:  # empty when saved without fp16: a switch to fp16 starts it fresh
            scaler.load_state_dict(blob["scaler"])
        set_rng_state(blob["rng"])
    # SWA (training/swa.py) averages the weights from epoch cfg.swa_start on (joint recipe only).
    swa = averaged(plan.model) if cfg.swa_start is not None else None
    if swa is not None and blob is not None and "swa" in blob:
        swa.load_state_dict(blob["swa"])
    total_steps = cfg.stage_epochs(stage) * steps_per_epoch
    lookahead = Lookahead(plan.model, total_steps) if cfg.lookahead else None
    if lookahead is not None and blob is not None and "lookahead" in blob:
        lookahead.load_state_dict(blob["lookahead"])
    return StageState(plan, optimizer, scheduler, scaler, swa, plan.model, lookahead)


def norms_record(model: MultiExitNet, grad_norms: list[float]) -> dict[str, list[float]]:
    """Per-block and per-head gradient norms (RMS over the epoch's steps) and weight norms (now)."""
    k = model.num_exits
    return {
        "block_grad_norm": grad_norms[:k],
        "head_grad_norm": grad_norms[k:],
        "block_weight_norm": group_norms(block_groups(model), grads=False).tolist(),
        "head_weight_norm": group_norms(head_groups(model), grads=False).tolist(),
    }


def evaluate_epoch(
    cfg: TrainConfig, state: StageState, stats: EpochStats, val: Split, device: torch.device,
    amp: str, world_size: int,
) -> dict[str, Any]:  # fmt: skip
    """The epoch's log record: training figures, validation accuracy per exit (of the SWA
    average and of the last iterate once SWA has finished)."""

    def accuracy(model: nn.Module) -> list[float]:
        logits = collect_logits(model, val, cfg.data.mean, cfg.data.std, batch_size=cfg.eval_batch_size,
                                device=device, amp=amp, tta=cfg.eval_tta)  # fmt: skip
        return exit_accuracy(logits, val.y)

    record = {
        "loss": stats.loss, "lr": stats.lr, "train_exit_acc": stats.exit_accuracy,
        "val_exit_acc": accuracy(state.final),
        "images_per_s": stats.images_per_second * world_size,
        "epoch_s": stats.seconds + stats.extra.get("swa_bn_s", 0.0),
        "skipped_steps": stats.skipped_steps,
    }  # fmt: skip
    if state.final is not state.plan.model:
        record.update(stats.extra, iterate_val_exit_acc=accuracy(state.plan.model))
    return record


def save_epoch(
    cfg: TrainConfig, state: StageState, stage: str, epoch: int, complete: bool,
    history: list[dict[str, Any]], data: Dataset, run_dir: Path,
) -> None:  # fmt: skip
    """Write ``run_dir/last.pt`` with everything an exact resume needs."""
    extra: dict[str, Any] = {}
    if state.swa is not None:
        extra["swa"] = state.swa.state_dict()
    if state.final is not state.plan.model:
        extra["last_iterate"] = state.plan.model.state_dict()
    if state.lookahead is not None:
        extra["lookahead"] = state.lookahead.state_dict()
    save_atomic(
        {
            **extra,
            "arch": model_spec(state.final), "model": state.final.state_dict(),
            "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict(), "rng": rng_state(), "stage": stage,
            "epoch": epoch, "config": config_to_dict(cfg), "history": history,
            "classes": data.classes, "data_info": data.info, "complete": complete,
        },
        run_dir / LAST,
    )  # fmt: skip


def copy_frozen_network(cfg: TrainConfig, num_classes: int, run_dir: Path, info: DistInfo) -> None:
    """Recipe stage2: keep ``init_from``'s network as ``run_dir/stage1.pt``, so that a resume
    needs the run directory alone."""
    if info.is_main and not (run_dir / STAGE1).is_file():
        save_atomic(frozen_network(cfg, num_classes), run_dir / STAGE1)
    if info.world_size > 1:
        dist.barrier()


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
    stages = cfg.stages()
    start = start_point(cfg, run_dir, resume, info)
    history = start.history
    if start.stage >= len(stages):
        return {"complete": True, "history": history}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg, info)
    amp = pick_amp(cfg, device)
    data: Dataset = load_dataset(cfg.data)
    train_split = on_device(data.train, device)  # a GPU gathers and augments its own batches
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.recipe == "stage2":
        copy_frozen_network(cfg, len(data.classes), run_dir, info)
    steps = len(data.train) // info.world_size // cfg.batch_size
    for si in range(start.stage, len(stages)):
        stage, epochs, seed = stages[si], cfg.stage_epochs(stages[si]), cfg.seed + si
        seed_everything(seed, cfg.deterministic)
        first = si == start.stage
        state = prepare_stage(
            cfg, stage, first, start, train_split, len(data.classes), steps, run_dir, device, amp
        )
        model = state.plan.model
        net: nn.Module = model
        if info.world_size > 1:
            cuda = device.type == "cuda"
            net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        for epoch in range(start.epoch if first else 0, epochs):
            if cfg.stop_after is not None and len(history) >= cfg.stop_after:
                return {"complete": False, "history": history, "model": model}
            batches, n = train_batches(
                train_split, cfg.data, cfg.batch_size, epoch, seed, info.rank, info.world_size
            )
            meter = GradNormMeter(block_groups(model) + head_groups(model))
            stats = train_one_epoch(
                net, batches, n, state.plan.criterion, state.optimizer, state.scheduler,
                state.scaler, device=device, amp=amp, max_bad_steps=cfg.max_bad_steps,
                progress=cfg.progress and info.is_main, frozen=state.plan.frozen,
                grad_meter=meter, description=f"{stage} {epoch + 1}/{epochs}",
                after_step=state.lookahead.after_step if state.lookahead else None,
            )  # fmt: skip
            last_epoch = epoch + 1 == epochs
            if last_epoch and state.lookahead is not None:
                state.lookahead.finish()
            if state.swa is not None and cfg.swa_start is not None and epoch + 1 >= cfg.swa_start:
                state.swa.update_parameters(model)
                if last_epoch:  # every rank re-estimates on the whole split: identical models
                    bn_start = time.perf_counter()
                    bn_batches, _ = train_batches(train_split, cfg.data, cfg.batch_size, epoch, seed)
                    state.final = recompute_batchnorm(state.swa, bn_batches, device=device, amp=amp)
                    stats.extra = {
                        "swa_averaged": int(state.swa.n_averaged),
                        "swa_bn_s": time.perf_counter() - bn_start,
                    }
            record: dict[str, Any] = {"stage": stage, "epoch": epoch + 1}
            if info.is_main:
                record.update(evaluate_epoch(cfg, state, stats, data.val, device, amp, info.world_size))
                record.update(norms_record(model, meter.result()))
                history.append(record)
                with open(run_dir / LOG, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(summarize(record), flush=True)
                complete = si == len(stages) - 1 and last_epoch
                save_epoch(cfg, state, stage, epoch + 1, complete, history, data, run_dir)
            else:
                history.append(record)
            if info.world_size > 1:
                dist.barrier()
        if stage == "stage1" and info.is_main:
            save_atomic({"arch": model_spec(model), "model": model.state_dict()}, run_dir / STAGE1)
        if info.world_size > 1:
            dist.barrier()
    return {"complete": True, "history": history, "model": state.final}
