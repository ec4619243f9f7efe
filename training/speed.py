"""Training-step throughput of a model under fp32 and bf16 autocast, measured in one process.

``python -m training.speed --threads 1`` alternates blocks of steps between the settings so
that both see the same machine load (the cores may be shared), after one warm-up round.
"""

from __future__ import annotations

import argparse
import time

import torch

from models import create_model
from training.equilibrium import enable_gradient_equilibrium
from training.loop import autocast_context
from training.losses import ofa_kd_loss


def measure(
    model_name: str, amps: list[str], *, batch: int, steps: int, rounds: int, compile_model: bool = False
) -> dict[str, list[float]]:
    """Images/s of fwd + bwd + SGD step (GE + ISC + OFA KD) per amp setting and round."""
    torch.manual_seed(0)
    model = create_model(model_name, isc=True)
    enable_gradient_equilibrium(model)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    run = torch.compile(model) if compile_model else model
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, model.num_classes, (batch,))
    out: dict[str, list[float]] = {a: [] for a in amps}
    for r in range(rounds + 1):
        for amp in amps:
            start = time.perf_counter()
            for _ in range(steps):
                with autocast_context(torch.device("cpu"), amp):
                    loss = ofa_kd_loss(run(x), y, 3.0, 0.5)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if r > 0:  # round 0 is the warm-up
                out[amp].append(steps * batch / (time.perf_counter() - start))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="msdnet")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up compiles)")
    p.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=["none", "bf16"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = measure(
        args.model,
        args.amp,
        batch=args.batch,
        steps=args.steps,
        rounds=args.rounds,
        compile_model=args.compile,
    )
    for amp, v in res.items():
        print(
            f"{amp:>5}: {' '.join(f'{x:.0f}' for x in v)} img/s "
            f"({args.threads} threads, batch {args.batch}{', compiled' if args.compile else ''})"
        )


if __name__ == "__main__":
    main()
