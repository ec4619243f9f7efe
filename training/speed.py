"""Training-step throughput of a model per batch size and autocast setting, measured in one process.

``python -m training.speed --threads 1`` alternates blocks of steps between the settings so
that all see the same machine load (the cores may be shared), after one warm-up round. A step is
what the trainer does per batch: gather + augment uint8 images on the device, autocast forward,
GE + ISC + OFA KD loss, backward, SGD. ``--device cuda --batch 128 256 512`` compares batch sizes
on a GPU, where small steps are bound by the host launching kernels rather than by arithmetic.
"""

from __future__ import annotations

import argparse
import time

import torch

from models import create_model
from training.augment import normalize, random_crop_flip
from training.equilibrium import enable_gradient_equilibrium
from training.loop import autocast_context
from training.losses import ofa_kd_loss

POOL = 8192  # uint8 images the batches are drawn from (as the trainer draws from its split)


def measure(
    model_name: str,
    amps: list[str],
    *,
    batches: list[int],
    steps: int,
    rounds: int,
    device: str = "cpu",
    compile_model: bool = False,
    channels_last: bool = False,
) -> dict[tuple[int, str], list[float]]:
    """Images/s of a full training step per ``(batch, amp)`` setting, one value per round."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = create_model(model_name, isc=True).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    enable_gradient_equilibrium(model)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    run = torch.compile(model) if compile_model else model
    pool = torch.randint(0, 256, (POOL, 3, 32, 32), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, model.num_classes, (POOL,), device=dev)
    gen = torch.Generator().manual_seed(0)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)

    def step(batch: int, amp: str) -> None:
        idx = torch.randint(0, POOL, (batch,), generator=gen).to(dev)
        x = normalize(random_crop_flip(pool[idx], 4, gen), mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(dev, amp):
            loss = ofa_kd_loss(run(x), labels[idx], 3.0, 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bool(torch.isfinite(loss.detach()))  # the trainer's NaN guard syncs once per step too

    out: dict[tuple[int, str], list[float]] = {(b, a): [] for b in batches for a in amps}
    for r in range(rounds + 1):
        for b, a in out:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            for _ in range(steps):
                step(b, a)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if r > 0:  # round 0 is the warm-up (and compiles, with --compile)
                out[(b, a)].append(steps * b / (time.perf_counter() - start))
    return out


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    p.add_argument("--model", default="msdnet")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--batch", type=int, nargs="+", default=[128], help="batch sizes to compare")
    p.add_argument("--steps", type=int, default=4, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up compiles)")
    p.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    p.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=["none", "bf16", "fp16"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = measure(
        args.model,
        args.amp,
        batches=args.batch,
        steps=args.steps,
        rounds=args.rounds,
        device=args.device,
        compile_model=args.compile,
        channels_last=args.channels_last,
    )
    extra = "".join(
        [", compiled" if args.compile else "", ", channels_last" if args.channels_last else ""]
    )
    for (batch, amp), v in res.items():
        print(
            f"batch {batch:>4} {amp:>5}: median {sorted(v)[len(v) // 2]:.0f} img/s "
            f"(rounds {' '.join(f'{x:.0f}' for x in v)}; {args.device}, {args.threads} threads{extra})"
        )


if __name__ == "__main__":
    main()
