"""``python -m training compare A B``: two trained networks, image by image, on one split.

Two accuracies a few tenths of a point apart on 2,500 images are usually a tie. What tells them
apart is the images one network gets right and the other wrong (the discordant pairs): McNemar's
exact test asks whether those split evenly between the two. The ensemble column (the mean of the
two softmax outputs) says what serving both would give. Decide between candidates on the
validation split; the test split is for reporting the one chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from math import comb
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from training.config import ConfigError

SPLITS = ("val", "test")


@dataclass(frozen=True)
class ExitComparison:
    """One exit of A against the same exit of B on one split (accuracies are fractions)."""

    exit: int
    accuracy_a: float
    accuracy_b: float
    only_a: int  # images A classifies right and B wrong
    only_b: int  # images B classifies right and A wrong
    p_value: float  # McNemar's exact test, two-sided
    ensemble_accuracy: float  # argmax of (softmax(A) + softmax(B)) / 2


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under "A and B are equally good" each of the
    ``n = only_a + only_b`` discordant images is A's with probability 1/2, so the smaller count
    is Binomial(n, 1/2); p = 2 P(X <= min(only_a, only_b)), capped at 1."""
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts cannot be negative")
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers; one rounding in the division


def compare_exits(logits_a: Tensor, logits_b: Tensor, labels: Tensor) -> list[ExitComparison]:
    """``logits_a``, ``logits_b``: ``[K, N, C]`` of the same images; ``labels``: ``[N]``."""
    if logits_a.shape != logits_b.shape or logits_a.shape[1] != labels.shape[0]:
        raise ValueError(
            f"logits {tuple(logits_a.shape)} and {tuple(logits_b.shape)} do not cover the same "
            f"{labels.shape[0]} images with the same exits and classes"
        )
    right_a = logits_a.argmax(-1) == labels
    right_b = logits_b.argmax(-1) == labels
    mean_p = (logits_a.float().softmax(-1) + logits_b.float().softmax(-1)) / 2
    right_ens = mean_p.argmax(-1) == labels
    rows = []
    for k in range(logits_a.shape[0]):
        only_a = int((right_a[k] & ~right_b[k]).sum())
        only_b = int((right_b[k] & ~right_a[k]).sum())
        rows.append(
            ExitComparison(
                exit=k,
                accuracy_a=right_a[k].float().mean().item(),
                accuracy_b=right_b[k].float().mean().item(),
                only_a=only_a,
                only_b=only_b,
                p_value=mcnemar_exact_p(only_a, only_b),
                ensemble_accuracy=right_ens[k].float().mean().item(),
            )
        )
    return rows


def format_table(rows: list[ExitComparison]) -> str:
    lines = ["exit   A acc    B acc   only A  only B  McNemar p  ensemble"]
    for r in rows:
        lines.append(
            f"{r.exit:>4}  {100 * r.accuracy_a:6.2f}%  {100 * r.accuracy_b:6.2f}%  {r.only_a:>6}"
            f"  {r.only_b:>6}  {r.p_value:9.3f}  {100 * r.ensemble_accuracy:7.2f}%"
        )
    return "\n".join(lines)


def add_compare_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compare",
        help="two trained networks image by image: per-exit accuracy, McNemar test, ensemble",
        description="Compare two networks trained on the same split, exit by exit: accuracy of "
        "each, the images only one of them gets right, McNemar's exact test on those (a small p "
        "means the difference is unlikely to be chance), and the accuracy of their ensemble (mean "
        "softmax). Each of A and B is a model package, a run directory (its last.pt) or a "
        "checkpoint file. Choose between models on the validation split; read the test split "
        "only for the model chosen.",
        epilog="example: python -m training compare packages/default runs/ban200/swa",
    )
    p.add_argument("a", type=Path, metavar="A", help="package, run directory or checkpoint")
    p.add_argument("b", type=Path, metavar="B", help="package, run directory or checkpoint")
    p.add_argument("--split", choices=[*SPLITS, "both"], default="val", help="default: val")
    p.add_argument("--data-dir", help="override data.path of A's training config")
    p.add_argument("--batch-size", type=int, default=500, help="evaluation batch size")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="also write the comparison here")
    p.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from training.checkpoint import load_trained
    from training.checks import check_same_split
    from training.config import recorded_config
    from training.data import load_dataset
    from training.loop import collect_logits

    if args.threads:
        torch.set_num_threads(args.threads)
    a, b = load_trained(args.a, "A"), load_trained(args.b, "B")
    for name, net, path in (("A", a, args.a), ("B", b, args.b)):
        if not net.complete:
            print(f"warning: {name} ({path}) is an unfinished run ({net.reached})", file=sys.stderr)
    cfg = recorded_config(a.config, args.data_dir)
    check_same_split(b.config["data"], "B", str(args.b), cfg)
    if a.classes != b.classes:
        raise ConfigError(f"A and B predict different classes: {a.classes} vs {b.classes}")
    if a.model.num_exits != b.model.num_exits:
        raise ConfigError(
            f"A has {a.model.num_exits} exits and B {b.model.num_exits}: exits cannot be paired"
        )
    data = load_dataset(cfg.data)
    d = cfg.data
    report: dict[str, Any] = {
        "a": {"path": str(args.a), "reached": a.reached, "complete": a.complete},
        "b": {"path": str(args.b), "reached": b.reached, "complete": b.complete},
    }
    for part in SPLITS if args.split == "both" else (args.split,):
        split = getattr(data, part)
        za, zb = (
            collect_logits(n.model, split, d.mean, d.std, batch_size=args.batch_size) for n in (a, b)
        )
        rows = compare_exits(za, zb, split.y)
        report[part] = {"images": len(split.y), "exits": [asdict(r) for r in rows]}
        print(f"{part} split, {len(split.y)} images: A = {args.a} ({a.reached}), "
              f"B = {args.b} ({b.reached})")  # fmt: skip
        print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
