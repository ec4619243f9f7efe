"""Run by ``torchrun`` in test_ddp.py: train, then save this rank's weights to OUT/rank<r>.pt."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from training.config import load_config
from training.device import DistInfo
from training.trainer import run_training


def main() -> None:
    config, out = Path(sys.argv[1]), Path(sys.argv[2])
    info = DistInfo(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
    dist.init_process_group(backend="gloo")
    try:
        result = run_training(load_config(config), info=info)
        torch.save(result["model"].state_dict(), out / f"rank{info.rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
