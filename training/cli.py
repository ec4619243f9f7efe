"""``python -m training COMMAND`` (train, evaluate, calibrate, export, quantize, rebudget, compare,
pack, unpack, ablation, factorial): the command-line edge.

Configuration is built here, once, from the YAML file and the flags, and passed down as typed
objects. Domain errors become one clear line on stderr and the exit code of :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.config import ConfigError, TrainConfig, load_config

EXIT_CONFIG, EXIT_DATA, EXIT_DIVERGED, EXIT_ARTIFACT = 2, 3, 4, 5


def exit_codes() -> dict[type[Exception], int]:
    """Domain error -> process exit code (imported late: the modules that raise them load torch).

    2 bad config or usage, 3 data not found or unreadable, 4 training diverged (NaN/Inf),
    5 checkpoint or package problem, or a finished run of the factorial that cannot be scored.
    """
    from training.checkpoint import CheckpointError
    from training.data import DataError
    from training.factorial.collect import CollectError
    from training.loop import TrainingDiverged

    return {
        ConfigError: EXIT_CONFIG,
        DataError: EXIT_DATA,
        TrainingDiverged: EXIT_DIVERGED,
        CheckpointError: EXIT_ARTIFACT,
        CollectError: EXIT_ARTIFACT,
    }


def _train_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train",
        help="train a multi-exit model (joint or two-stage IMTA recipe)",
        description="Train a multi-exit model. Settings come from --config (YAML), then the flags "
        "below, then --set overrides. Writes log.jsonl and last.pt (every epoch, atomically) to the "
        "run directory. Under torchrun every process trains its shard (DistributedDataParallel: "
        "gloo on CPU, nccl on CUDA); rank 0 logs and saves.",
        epilog="example: python -m training train --config configs/msdnet_cifar10_default.yaml "
        "--ge --isc --kd --kd-temperature 3 --kd-weight 0.5 --run-dir /tmp/run",
    )
    p.add_argument("--config", type=Path, help="YAML file with TrainConfig keys")
    p.add_argument("--run-dir", help="where checkpoints, logs and plots go")
    p.add_argument("--data-dir", help="data.path: archive, ImageFolder root or torchvision root")
    p.add_argument("--resume", action="store_true", help="continue exactly from run-dir/last.pt")
    p.add_argument(
        "--init-from",
        help="warm restart: start from this checkpoint's weights (same model and split), fresh "
        "optimiser and schedule; recipe stage2: the finished run whose network stage 2 freezes",
    )
    p.add_argument("--recipe", choices=["joint", "two-stage", "stage2"], help="IMTA recipe")
    p.add_argument("--epochs", type=int, help="epochs (of stage 1 for two-stage)")
    p.add_argument("--stop-after", type=int, help="stop after N epochs in total; --resume later")
    p.add_argument("--batch-size", type=int, help="per-process batch size")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--ge", action=argparse.BooleanOptionalAction, help="Gradient Equilibrium")
    p.add_argument(
        "--lr-scaled",
        action=argparse.BooleanOptionalAction,
        help="control for GE: block i's learning rate x 1/(K - i), no GE",
    )
    p.add_argument("--isc", action=argparse.BooleanOptionalAction, help="Inline Subnetwork Collab.")
    p.add_argument("--isc-detach", action=argparse.BooleanOptionalAction, help="detach the ISC link")
    p.add_argument("--kd", action=argparse.BooleanOptionalAction, help="one-for-all distillation")
    p.add_argument("--kd-temperature", type=float, help="KD temperature T")
    p.add_argument("--kd-weight", type=float, help="KD weight g in [0, 1]")
    p.add_argument("--kd-form", choices=["batchmean", "official"], help="KL reduction of the KD term")
    p.add_argument(
        "--kd-teacher",
        metavar="CHECKPOINT_OR_PACKAGE",
        nargs="+",
        help="distil from a trained network, same split: a finished run's last.pt or an exported "
        "model package (e.g. packages/default); its last exit, frozen, teaches every exit, the "
        "last one included (joint recipe, with --kd). Several: their last exits' logits, "
        "averaged, teach (an ensemble)",
    )
    p.add_argument(
        "--swa-start",
        type=int,
        metavar="EPOCH",
        help="stochastic weight averaging from this epoch on (joint recipe; pair it with "
        "--set optim.schedule=constant); the final model is the average",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config key: optim.lr=0.05"
    )


def train_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of ``train`` that were given, by dotted config key, as typed values.

    They win over the YAML and ``--set`` wins over them; paths stay text (not parsed as YAML).
    """
    pairs = {
        "run_dir": args.run_dir,
        "data.path": args.data_dir,
        "init_from": args.init_from,
        "recipe": args.recipe,
        "epochs": args.epochs,
        "stop_after": args.stop_after,
        "batch_size": args.batch_size,
        "optim.lr": args.lr,
        "threads": args.threads,
        "ge": args.ge,
        "lr_scaled": args.lr_scaled,
        "kd_form": args.kd_form,
        "model.isc": args.isc,
        "model.isc_detach": args.isc_detach,
        "kd": args.kd,
        "kd_temperature": args.kd_temperature,
        "kd_weight": args.kd_weight,
        "kd_teacher": args.kd_teacher,
        "swa_start": args.swa_start,
        "progress": False if args.no_progress else None,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def _run_train(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    from training.device import DistInfo
    from training.trainer import run_training

    cfg: TrainConfig = load_config(args.config, list(args.set), values=train_flags(args))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if world > 1:
        use_cuda = cfg.device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        result = run_training(cfg, resume=args.resume, info=info)
    finally:
        if world > 1:
            dist.destroy_process_group()
    if info.is_main:
        done = "complete" if result["complete"] else "stopped (resume with --resume)"
        print(f"training {done}: {len(result['history'])} epochs in {cfg.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="IMTA training, evaluation, threshold calibration, model-package export and "
        "budget refits, "
        "paired comparison of two trained networks, recipe ablations and the IMTA factorial's "
        "evaluation and report.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)
    from training.ablation import add_ablation_parser
    from training.commands import add_artifact_parsers
    from training.compare import add_compare_parser
    from training.factorial.cli import add_factorial_parser
    from training.quantize import add_quantize_parser
    from training.rebudget import add_rebudget_parser
    from training.transfer import add_transfer_parsers

    add_artifact_parsers(sub)
    add_quantize_parser(sub)
    add_rebudget_parser(sub)
    add_compare_parser(sub)
    add_transfer_parsers(sub)
    add_ablation_parser(sub)
    add_factorial_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    codes = exit_codes()
    try:
        if args.command == "train":
            return _run_train(args)
        code: int = args.handler(args)
        return code
    except tuple(codes) as e:
        print(f"error: {e}", file=sys.stderr)
        return codes[type(e)]
