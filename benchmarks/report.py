"""``BENCHMARKS.md`` and its plot from the JSON results of the suites: the serving figures of
``python -m benchmarks``, the side by side with the peers (``peers.json``, ``peers_fp32.json``,
``peers_int8.json``, ``profile_components.json``), and the sections the IMTA factorial
(``python -m training factorial report``) and the engine-modes benchmark write (``imta.md``,
``engine_modes.md``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.harness.output import table
from benchmarks.harness.provenance import RESULTS, display
from benchmarks.profile import markdown as profile_markdown
from benchmarks.side_by_side import PEER_FILES
from training.plots import figure  # the one plot frame, shared with the training reports

ENGINE_MODES, IMTA_SECTION = RESULTS / "engine_modes.md", RESULTS / "imta.md"
PEER_TARGETS = (  # (ratio key, wanted at least, what it compares)
    ("http_b05_over_b10", 1.6, "HTTP budget 0.5 / budget 1.0"),
    ("http_b05_over_better_peer", 1.5, "HTTP budget 0.5 / the better peer"),
    ("http_b10_over_better_peer", 1.0, "HTTP budget 1.0 / the better peer"),
    ("http_b10_over_engine_b10", 0.8, "HTTP budget 1.0 / in-process engine budget 1.0"),
)


def plot_serving(loads: dict[str, Any], path: Path) -> None:
    """Closed-loop throughput and open-loop latency (half load) against the budget."""
    closed = sorted(loads["closed_loop"], key=lambda r: r["budget"])
    opened = sorted(loads["open_loop"], key=lambda r: r["budget"])
    with figure(path, cols=2, size=(11, 4), dpi=110) as (_, (ax1, ax2)):
        ax1.plot([r["budget"] for r in closed], [r["images_per_s"] for r in closed], "o-")
        ax1.set(title="HTTP closed loop: throughput", xlabel="budget", ylabel="images/s")
        for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^:")):
            ax2.plot([r["budget"] for r in opened], [r[key] for r in opened], style, label=key[:3])
        ax2.set(title="HTTP open loop at half load: latency", xlabel="budget", ylabel="ms")
        ax2.legend()


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _num(v: Any, fmt: str = ".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _errors(row: dict[str, Any]) -> str:
    """``3 (HTTP 503: 2, ConnectionResetError: 1)``."""
    detail = ", ".join(f"{k}: {v}" for k, v in sorted((row.get("error_kinds") or {}).items()))
    return f"{row['errors']} ({detail})" if detail else str(row["errors"])


def serving_tables(serving: dict[str, Any]) -> list[str]:
    loads, pkg = serving["loads"], serving.get("package")
    served = (
        f"Package served: `{pkg['path']}` ({pkg['name']}, {pkg['exits']} exits, default "
        f"budget {pkg['default_budget']}); its own held test part. "
        if isinstance(pkg, dict)
        else ""
    )
    rows = [(r["loop"], r["budget"], r["concurrency"], _num(r["offered_rate"] or None), r["requests"],
             _errors(r), *(f"{r[k]:.1f}" for k in ("images_per_s", "p50_ms", "p95_ms", "p99_ms")),
             _pct(r["accuracy"]), f"{r['mean_compute_fraction']:.3f}")
            for r in loads["closed_loop"] + loads["open_loop"]]  # fmt: skip
    lines = [
        f"{served}HTTP (uvicorn on 127.0.0.1, torch backend, batching on, 1 intra-op thread), "
        f"{loads['images']} real labelled test images, one image per request.", "",
        *table(("loop", "budget", "clients / peak in flight", "offered rate/s", "requests", "errors",
                "images/s", "p50 ms", "p95 ms", "p99 ms", "accuracy %", "mean compute"), rows),
    ]  # fmt: skip
    if serving.get("grid"):
        lines += ["", "Backend x batching x mode (`benchmarks/serving.py` on the same package and test "
                  "images, closed loop; `engine` = in-process, no HTTP):", ""]  # fmt: skip
        lines += table(
            ("mode", "backend", "batching", "budget", "clients", "requests", "images/s", "p50 ms",
             "p99 ms", "compute"),
            [(r["mode"], r["backend"], r["batching"], r["budget"], r["concurrency"], r["requests"],
              f"{r['images_per_s']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
              f"{r['mean_compute_fraction']:.3f}") for r in serving["grid"]],
        )  # fmt: skip
    return lines


def target_lines(h: dict[str, Any]) -> list[str]:
    """The serving targets as sentences with their measured values."""
    out = []
    if s := h.get("speedup_within_half_point"):
        out.append(
            "- Fastest budget (HTTP images/s) within 0.5 point of the full model's accuracy: "
            f"{s['budget']} ({s['accuracy_delta_points']:+.2f} points), {s['throughput_ratio']:.2f}x "
            f"the full model's HTTP throughput; target >= 2x: {_verdict(s['throughput_ratio'] >= 2.0)}."
        )
    for key, what, ok in (
        ("p99_over_p50_at_half_load", "p99 / p50 at half of saturation (open loop)", lambda v: v < 3),
        ("http_over_engine", "HTTP / in-process engine throughput", lambda v: v >= 0.8),
    ):
        if r := h.get(key):
            vals = {k: v for k, v in r.items() if k != "target"}
            prefix = "budget " if key.startswith("p99") else ""
            cells = ", ".join(f"{prefix}{k}: {v:.2f}" for k, v in vals.items())
            out.append(
                f"- {what}: {cells}; target {r['target']}: {_verdict(all(map(ok, vals.values())))}."
            )
    if skipped := h.get("budgets_not_served"):
        out.append(f"- Budgets not served: {skipped}")
    return out


def _accuracy(acc: float | None, n: int | None) -> str:
    """``89.10 ± 1.05``: the share of right answers and its binomial standard error, in %."""
    if acc is None or not n or math.isnan(acc):
        return "-"
    return f"{100 * acc:.2f} ± {100 * math.sqrt(acc * (1 - acc) / n):.2f}"


def _accuracy_line(rows: dict[str, Any], package_accuracy: dict[str, float] | None) -> str:
    """Budget 0.5 minus 1.0 in accuracy points: in these runs (with its standard error) and on the
    whole held test part (the package's table), which decides the 0.5-point target."""
    a, b = rows.get("anytime HTTP, budget 0.5", {}), rows.get("anytime HTTP, budget 1.0", {})
    out = []
    if a.get("answers") and b.get("answers"):
        se = math.sqrt(sum(r["accuracy"] * (1 - r["accuracy"]) / r["answers"] for r in (a, b)))
        out.append(f"{100 * (a['accuracy'] - b['accuracy']):+.2f} ± {100 * se:.2f} points in these runs")
    if package_accuracy and {"0.5", "1.0"} <= set(package_accuracy):
        d = 100 * (package_accuracy["0.5"] - package_accuracy["1.0"])
        out.append(
            f"{d:+.2f} points on the whole held test part (target within 0.5: {_verdict(d >= -0.5)})"
        )
    return "; accuracy " + ", ".join(out) if out else ""


def _warmup_text(settings: dict[str, Any], rows: dict[str, Any]) -> str:
    """`` counted after 2 s of warm-up load ...``, naming the runs that needed a longer one."""
    if "warmup_seconds" not in settings:
        return ""
    base = settings["warmup_seconds"]
    runs = [r for row in rows.values() for r in row.get("runs", [])]
    longer = [r["warmup_s"] for r in runs if r.get("warmup_s", base) > base]
    text = f" counted after {base:.0f} s of warm-up load (answers inside the window only"
    if longer:
        text += (f"; {len(longer)} of {len(runs)} runs were run again with a longer warm-up, up to "
                 f"{max(longer):.1f} s, because wrk's threads were still starting")  # fmt: skip
    return text + ")"


def ratio_lines(ratios: dict[str, Any], rows: dict[str, Any], package_accuracy: Any = None) -> list[str]:
    """The side-by-side ratios as sentences, each with its target and whether this run met it."""
    out = []
    for key, wanted, what in PEER_TARGETS:
        if (v := ratios.get(key)) is not None:
            peer = f" ({ratios['better_peer']})" if key.endswith("better_peer") else ""
            extra = _accuracy_line(rows, package_accuracy) if key == "http_b05_over_b10" else ""
            out.append(f"- {what}: {v:.2f}{peer}; target >= {wanted}: {_verdict(v >= wanted)}{extra}.")
    if (v := ratios.get("http_b05_over_engine_b05")) is not None:
        out.append(f"- HTTP budget 0.5 / in-process engine budget 0.5: {v:.2f}.")
    return out


def peers_section(peers: dict[str, Any], profile: dict[str, Any] | None = None) -> list[str]:
    """Markdown lines: setting, the side-by-side table, the ratios, the request-cost table."""
    meta, s, rows = peers["meta"], peers["settings"], peers["rows"]
    busy = max(meta.get("loadavg_1m", [0.0])) > 1.5
    precision = s.get("precision", "fp32")
    mode = s.get("mode", precision)  # auto: make serve's defaults
    make = "make bench-peers" if mode == "auto" else f"ANYTIME_PRECISION={mode} make bench-peers"
    lines = [
        "## Side by side: this service, Triton and LitServe ("
        + ("make serve's defaults, " if mode == "auto" else "") + f"{precision})", "",
        f"- command: `{meta['command']}` (`{make}`); {meta['date']} UTC, commit "
        f"`{meta['commit']}`; {meta['machine']}",
        f"- load on the machine: `{meta['uptime_before']}` before, `{meta['uptime_after']}` after"
        + (" (the cores were shared with other work: timings are noisy, ratios within the run "
           "are the figures to read)" if busy else ""),
        f"- wrk, {s['connections']} connections (one thread each), {s['seconds']:.0f} s per run"
        + _warmup_text(s, rows) + f", {s['repeats']} runs per row round-robin (median shown, range in "
        f"brackets); {s['images']} held test JPEGs of `{s['package']}`, one per request, every answer "
        "scored against its label (`benchmarks/wrk/classify.lua`)",
        f"- this service: {s['service']}; peers: {s['peers']}; the in-process engine: same "
        "engine settings, one image per request from 16 concurrent clients, decoded in the process", "",
    ]  # fmt: skip
    cells = []
    for label, r in rows.items():
        lo, hi = r.get("images_per_s_range", [None, None])
        cells.append((label, r.get("precision", precision), r["body"],
                      f"{_num(r['images_per_s'])} ({_num(lo)}-{_num(hi)})",
                      _num(r.get("p50_ms")), _num(r.get("p99_ms")),
                      _accuracy(r.get("accuracy"), r.get("answers")), r.get("answers", "-"),
                      r.get("failed", "-"), _num(r.get("server_cpu_ms_per_image"), ".2f")))  # fmt: skip
    lines += table(("server", "precision", "request body", "images/s", "p50 ms", "p99 ms",
                    "accuracy % (± s.e.)", "answers", "failed", "server CPU ms/image"),
                   cells)  # fmt: skip
    lines += ["", *ratio_lines(peers["ratios"], rows, s.get("package_accuracy"))]
    if acc := s.get("package_accuracy"):
        lines.append(
            "- Accuracy on the whole held test part (the package's budget table): "
            + ", ".join(f"budget {b}: {100 * a:.2f} %" for b, a in acc.items())
            + "; the wrk accuracies above are over the answers of these short runs only (standard error "
            "shown)."
        )
    if profile:
        lines += [
            "", f"### CPU per one-image request, by component (budget {profile['budget']})", "",
            f"`python -m benchmarks.profile --budget {profile['budget']}`: "
            f"{profile['images_per_s']:.1f} images/s during a {profile['seconds']:.0f} s profile. "
            f"{profile['method']}", "",
            *profile_markdown(profile),
        ]  # fmt: skip
    return lines


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def render(results: dict[str, Any], out_dir: Path) -> str:
    """The whole BENCHMARKS.md text for ``results`` (written by :mod:`benchmarks.pipeline`) and the
    other suites' results in ``out_dir``."""
    meta, rel = results["meta"], display(out_dir)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks` (`make bench`); do not edit by hand.",
        "",
    ]
    if meta.get("quick"):
        lines += [
            "> **Quick smoke run.** Short loads: these numbers only show that the suite runs end to "
            "end; they are not evidence for or against any serving target.", "",
        ]  # fmt: skip
    load = ""
    if "loadavg_1m" in meta:
        a, b = meta["loadavg_1m"]
        busy = " (the cores were shared with other work: timings are noisy)" if a > 1.5 else ""
        load = f"; 1-minute load average {a:.1f} at the start, {b:.1f} at the end{busy}"
    lines += [
        f"- command: `{meta['command']}`", f"- machine: {meta['machine']}{load}",
        f"- date (UTC): {meta['date']}; git commit: `{meta['commit']}`",
        f"- results: `{rel}/results.json`; plot: `{rel}/serving.png`", "",
        "How: the serving part serves a package (`packages/default`; `--package`) with "
        "`python -m service` on 127.0.0.1; `benchmarks/harness/load.py` sends its "
        "held-out test images one per request, closed loop (fixed clients) and open loop (Poisson "
        "arrivals, latency from the scheduled arrival), bounded by requests and seconds.", "",
    ]  # fmt: skip
    if IMTA_SECTION.is_file():
        lines += [IMTA_SECTION.read_text().rstrip(), ""]
    if results.get("serving"):
        lines += ["## Serving", "", *serving_tables(results["serving"]), ""]
        lines += [f"![serving]({rel}/serving.png)", "", "### Targets", ""]
        lines += [*target_lines(results["serving"]["headline"]), ""]
    for precision, name in PEER_FILES.items():  # `python -m benchmarks --only peers [--precision]`
        if peers := _read(out_dir / name):
            prof = _read(out_dir / "profile_components.json") if precision == "auto" else None
            lines += [*peers_section(peers, prof), ""]
    if ENGINE_MODES.is_file():
        lines += [
            "## Engine modes (from `benchmarks/results/engine_modes.md`)",
            "",
            ENGINE_MODES.read_text(),
        ]
    return "\n".join(lines).rstrip() + "\n"
