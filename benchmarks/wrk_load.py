"""wrk with labelled images against a running server (:mod:`benchmarks.harness.wrk`).

    .venv/bin/python -m benchmarks.wrk_load --url http://127.0.0.1:8000 \\
        --path '/v1/models/NAME/classify?budget=0.5' --images DIR --seconds 5 --repeats 3
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.harness.cli import suite_parser
from benchmarks.harness.wrk import BODIES, WARMUP_S, WrkError, run_repeats


def main(argv: list[str] | None = None) -> int:
    p = suite_parser("benchmarks.wrk_load", __doc__, package=False, data=False)
    p.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    p.add_argument("--path", required=True, help="request path with its query")
    p.add_argument("--images", type=Path, required=True, help="a folder with labels.txt")
    p.add_argument("--body", choices=BODIES, default="raw")
    p.add_argument("--seconds", type=float, default=5.0, help="the measured window per run")
    p.add_argument(
        "--warmup",
        type=float,
        default=WARMUP_S,
        help="seconds of load before the window opens (wrk's threads start one by one)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--connections", type=int, default=16)
    a = p.parse_args(argv)
    try:
        out = run_repeats(a.url, a.path, a.body, a.images, a.seconds, a.repeats, a.connections, a.warmup)
    except WrkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
