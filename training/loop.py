"""One epoch of training and one pass of evaluation, readable top to bottom.

``train_one_epoch`` owns the per-step details: autocast, the NaN/Inf guard (skip the step; after
``max_bad_steps`` in a row raise :class:`TrainingDiverged`), gradient scaling for fp16, the
per-step learning-rate schedule, and the progress bar (images/s, loss, per-exit accuracy).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from training.augment import normalize
from training.blocks import GradNormMeter
from training.data import Split

Criterion = Callable[[list[Tensor], Tensor, Tensor], Tensor]
"""``criterion(all_logits, target [N], images [N,3,H,W]) -> scalar loss``."""


class TrainingDiverged(Exception):
    """The loss was NaN/Inf for too many steps in a row; the last good checkpoint is intact."""


@dataclass
class EpochStats:
    loss: float
    exit_accuracy: list[float]
    images: int
    seconds: float
    skipped_steps: int
    lr: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


PROGRESS_EVERY = 10  # steps between progress-bar figures (each reads the sums back from the device)


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager[None]:
    """Autocast for ``amp`` in {"none", "bf16", "fp16"} on ``device``."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(
    model: nn.Module,
    batches: Iterator[tuple[Tensor, Tensor]],
    num_batches: int,
    criterion: Criterion,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    *,
    device: torch.device,
    amp: str = "none",
    max_bad_steps: int = 5,
    progress: bool = True,
    frozen: list[nn.Module] | None = None,
    grad_meter: GradNormMeter | None = None,
    after_step: Callable[[], None] | None = None,
    description: str = "train",
) -> EpochStats:
    """Train ``model`` on ``batches`` (already augmented and normalised, on any device).

    ``frozen`` modules stay in eval mode (BatchNorm statistics fixed: the two-stage recipe).
    ``grad_meter`` sees every step's gradients, unscaled, before the update; ``after_step`` runs
    after every update (lookahead).

    Raises:
        TrainingDiverged: ``max_bad_steps`` consecutive non-finite losses.
    """
    model.train()
    for m in frozen or []:
        m.eval()
    distributed = dist.is_available() and dist.is_initialized()
    seen, steps, bad_in_row, skipped = 0, 0, 0, 0
    # Sums stay on the device: reading them back every step would stall a GPU's queue (one
    # host sync per step remains, the NaN guard's, which must decide before the update).
    total_loss = torch.zeros((), device=device)
    correct: Tensor | None = None
    start = time.perf_counter()
    bar = tqdm(
        total=num_batches, desc=description, disable=not progress, leave=False, dynamic_ncols=True
    )
    for images, target in batches:
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with autocast_context(device, amp):
            all_logits = model(images)
            loss = criterion(all_logits, target, images)
        finite = torch.isfinite(loss.detach()).to(torch.int32)
        if distributed:  # every rank must skip together, or DDP's all-reduce would hang
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        optimizer.zero_grad(set_to_none=True)
        if not bool(finite):
            bad_in_row += 1
            skipped += 1
            if bad_in_row >= max_bad_steps:
                bar.close()
                raise TrainingDiverged(
                    f"loss was NaN/Inf for {bad_in_row} steps in a row (step {steps + 1} of the epoch); "
                    "stopped. The last good checkpoint is intact: lower optim.lr or check the data."
                )
            continue
        bad_in_row = 0
        scaler.scale(loss).backward()
        if grad_meter is not None:
            scaler.unscale_(optimizer)  # a no-op without fp16; step() then skips its own unscale
            grad_meter.update()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if after_step is not None:
            after_step()
        steps += 1
        n = target.shape[0]
        seen += n
        total_loss += loss.detach().float() * n
        hits = torch.stack([(z.detach().argmax(1) == target).sum() for z in all_logits])
        correct = hits if correct is None else correct + hits
        if progress:
            if steps % PROGRESS_EVERY == 0 or steps == num_batches:
                elapsed = time.perf_counter() - start
                accs = " ".join(f"{100 * float(c) / seen:.0f}" for c in correct.tolist())
                rate = f"{seen / elapsed:.0f} img/s loss {float(total_loss) / seen:.3f} acc {accs}"
                bar.set_postfix_str(rate, refresh=False)
            bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start
    acc = [float(c) / max(seen, 1) for c in correct.tolist()] if correct is not None else []
    return EpochStats(
        loss=float(total_loss) / max(seen, 1),
        exit_accuracy=acc,
        images=seen,
        seconds=seconds,
        skipped_steps=skipped,
        lr=float(optimizer.param_groups[0]["lr"]),
    )


@torch.no_grad()
def collect_logits(
    model: nn.Module,
    split: Split,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    batch_size: int = 500,
    device: torch.device | None = None,
    amp: str = "none",
    tta: str = "none",
) -> Tensor:
    """Logits of every exit on ``split`` in eval mode: ``[K, N, C]`` float32 on the CPU.

    ``tta``: "flip" averages the logits over each image and its mirror; "flip-translate" also
    over the image shifted one pixel up-left and down-right (reflect padding), weighted as
    airbench's 6 views (half on the unshifted pair).
    """
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    chunks: list[Tensor] = []
    try:
        for i in range(0, len(split), batch_size):
            x = normalize(split.x[i : i + batch_size].to(device), mean, std)
            with autocast_context(device, amp):
                out = views_logits(model, x, tta)
            chunks.append(out.cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks, dim=1)


def views_logits(model: nn.Module, x: Tensor, tta: str) -> Tensor:
    """``[K, N, C]`` float32 logits of ``x`` (``[N, 3, H, W]``), averaged over ``tta``'s views."""

    def mirrored(v: Tensor) -> Tensor:
        one = torch.stack([z.float() for z in model(v)])
        if tta == "none":
            return one
        return 0.5 * (one + torch.stack([z.float() for z in model(v.flip(3))]))

    out = mirrored(x)
    if tta == "flip-translate":
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [padded[..., :h, :w], padded[..., 2 : h + 2, 2 : w + 2]]
        out = 0.5 * out + 0.25 * (mirrored(shifted[0]) + mirrored(shifted[1]))
    return out


def exit_accuracy(logits: Tensor, labels: Tensor) -> list[float]:
    """``logits [K, N, C]``, ``labels [N]`` -> accuracy of each exit (fractions)."""
    return (logits.argmax(-1) == labels.view(1, -1)).float().mean(1).tolist()
