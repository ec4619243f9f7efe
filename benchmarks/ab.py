"""A/B of two servers over HTTP: two settings, or this checkout against another, side by side.

    python -m benchmarks.ab --b="--limits.inline-decode-bytes 0" --rounds 8 --budgets 1.0 0.5
    python -m benchmarks.ab --b-checkout ../old-checkout --a="--no-grpc" --b="--no-grpc"

Options that start with ``--`` go after ``=``. Both servers serve the package and stay up
together; wrk (16 connections, one held test JPEG per request, ``/v1/.../classify?budget=B``)
loads one at a time, alternating which goes first every round, so a drift of the machine (another
job, the CPU's clock) falls on both alike. Each server is ``python -m service`` with the options of
``make serve`` (``--workers``, backend and precision ``auto``) unless its options say otherwise.
Printed per budget: both medians, the ratio of the medians (a over b) and every round's paired
ratio: one sitting's ratios, never a timing to compare with another sitting's. ``--json`` keeps
the rounds.
"""

from __future__ import annotations

import shlex
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness.cli import suite_parser
from benchmarks.harness.data import write_held_set
from benchmarks.harness.output import write_json
from benchmarks.harness.servers import Server, service_spec
from benchmarks.harness.wrk import run_wrk
from models.package import read_manifest

SIDES = ("a", "b")


def summary(rates: dict[str, list[float]]) -> dict[str, Any]:
    """Medians, their ratio (a / b) and the paired ratios of one budget's rounds (pure)."""
    a, b = rates["a"], rates["b"]
    return {
        "a": statistics.median(a),
        "b": statistics.median(b),
        "ratio": statistics.median(a) / statistics.median(b),
        "paired": sorted(x / y for x, y in zip(a, b, strict=True)),
        "a_wins": sum(x > y for x, y in zip(a, b, strict=True)),
    }


def main(argv: list[str] | None = None) -> None:
    p = suite_parser("benchmarks.ab", __doc__)
    p.add_argument("--a", default="", help="options of server a (`python -m service` flags)")
    p.add_argument("--b", default="", help="options of server b")
    p.add_argument("--b-checkout", type=Path, help="run server b from this checkout of the repository")
    p.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.5])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=5.0, help="measured window of one wrk run")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--json", type=Path, help="write every round here")
    args = p.parse_args(argv)

    name = read_manifest(args.package).name
    options = {"a": shlex.split(args.a), "b": shlex.split(args.b)}
    with tempfile.TemporaryDirectory(prefix="anytime-ab-") as tmp:
        images = write_held_set(args.package, Path(tmp) / "images", args.data_dir)
        servers: dict[str, Server] = {}
        try:
            for side in SIDES:
                spec = service_spec(args.package.resolve(), None, options[side])
                if side == "b" and args.b_checkout is not None:
                    spec.checkout = args.b_checkout.resolve()
                    if "grpc_port" not in (spec.checkout / "service" / "settings.py").read_text():
                        at = spec.command.index("--grpc-port")  # a checkout before the gRPC API
                        del spec.command[at : at + 2]
                servers[side] = Server(spec, Path(tmp) / f"server-{side}.log")
            rates: dict[float, dict[str, list[float]]] = {
                b: {side: [] for side in SIDES} for b in args.budgets
            }
            for r in range(args.rounds):
                order = SIDES if r % 2 == 0 else SIDES[::-1]
                for budget in args.budgets:
                    path = f"/v1/models/{name}/classify?budget={budget}"
                    for side in order:
                        w = run_wrk(
                            servers[side].url, path, "raw", images, args.seconds, args.connections
                        )
                        rates[budget][side].append(w.images_per_s)
                        print(f"round {r + 1}/{args.rounds} budget {budget} {side}: "
                              f"{w.images_per_s:.1f} images/s", flush=True)  # fmt: skip
        finally:
            for server in servers.values():
                server.stop()
    print(f"\na: {args.a or '(defaults)'}\nb: {args.b or '(defaults)'}"
          f"{f' from {args.b_checkout}' if args.b_checkout else ''}")  # fmt: skip
    print("budget | a images/s | b images/s | a / b (medians) | paired a / b, sorted | rounds a won")
    for budget in args.budgets:
        s = summary(rates[budget])
        paired = " ".join(f"{x:.3f}" for x in s["paired"])
        print(f"{budget:6} | {s['a']:10.1f} | {s['b']:10.1f} | {s['ratio']:15.3f} | {paired} "
              f"| {s['a_wins']}/{args.rounds}")  # fmt: skip
    if args.json is not None:
        write_json(args.json, {"a": args.a, "b": args.b, "b_checkout": str(args.b_checkout or ""),
                               "rates": {str(b): v for b, v in rates.items()}})  # fmt: skip


if __name__ == "__main__":
    main()
