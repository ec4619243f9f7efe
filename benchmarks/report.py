"""PNG plots and the generated ``BENCHMARKS.md`` from the JSON results of ``python -m benchmarks``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display (benchmarks run headless)
import matplotlib.pyplot as plt

from benchmarks.report_peers import section_if_measured

ENGINE_MODES = Path(__file__).resolve().parent / "results" / "engine_modes.md"
IMTA_SECTION = Path(__file__).resolve().parent / "results" / "imta.md"  # benchmarks.imta report


def plot_ablation(arms: list[dict[str, Any]], path: Path) -> None:
    """Anytime points (per exit) and budgeted curves (optimised thresholds) of every arm vs MAdds."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.5))
    for a in arms:
        style = "o--" if a.get("follow_up") else "o-"  # the five core arms in solid lines
        madds = a["exit_mult_adds_millions"]
        ax1.plot(madds, [100 * v for v in a["test_exit_accuracy"]], style, label=a["label"])
        full = madds[-1]
        opt = sorted((r["optimised"]["compute"], r["optimised"]["accuracy"]) for r in a["budgets"])
        ax2.plot([full * c for c, _ in opt], [100 * v for _, v in opt], style, label=a["label"])
        if a["arm"] == "ge_isc_kd":
            geo = sorted((p["compute"], p["accuracy"]) for p in a["geometric_curve_test"])
            ax2.plot(
                [full * c for c, _ in geo],
                [100 * v for _, v in geo],
                "k:",
                label=f"{a['label']}, geometric",
            )
    ax1.set(
        title="Anytime: accuracy of each exit (test part)", xlabel="multiply-adds (M)", ylabel="top-1 %"
    )
    ax2.set(
        title="Budgeted: optimised thresholds (test part)",
        xlabel="mean multiply-adds (M)",
        ylabel="top-1 %",
    )
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    # One legend under both panels: inside, nine arms' labels hid the curves.
    handles, labels = ax2.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * ((len(labels) + 2) // 3), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_serving(loads: dict[str, Any], path: Path) -> None:
    """Closed-loop throughput and open-loop latency (half load) against the budget."""
    closed = sorted(loads["closed_loop"], key=lambda r: r["budget"])
    opened = sorted(loads["open_loop"], key=lambda r: r["budget"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([r["budget"] for r in closed], [r["images_per_s"] for r in closed], "o-")
    ax1.set(title="HTTP closed loop: throughput", xlabel="budget", ylabel="images/s")
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^:")):
        ax2.plot([r["budget"] for r in opened], [r[key] for r in opened], style, label=key[:3])
    ax2.set(title="HTTP open loop at half load: latency", xlabel="budget", ylabel="ms")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load(meta: dict[str, Any]) -> str:
    if "loadavg_1m" not in meta:
        return ""
    a, b = meta["loadavg_1m"]
    busy = " (the cores were shared with other work: timings are noisy)" if a > 1.5 else ""
    return f"; 1-minute load average {a:.1f} at the start, {b:.1f} at the end{busy}"


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def ablation_tables(arms: list[dict[str, Any]]) -> list[str]:
    k = len(arms[0]["test_exit_accuracy"])
    madds = " | ".join(f"exit {i} ({m:.1f}M)" for i, m in enumerate(arms[0]["exit_mult_adds_millions"]))
    lines = [
        "Per-exit top-1 accuracy (%) on the held test part; cumulative multiply-adds in brackets.",
        "",
        f"| arm | {madds} | epochs | train time (s) |",
        "|---|" + "---|" * (k + 2),
    ]
    for a in arms:
        accs = " | ".join(_pct(v) for v in a["test_exit_accuracy"])
        lines.append(f"| {a['label']} | {accs} | {a['epochs']} | {a['train_seconds']:.0f} |")
    by = {a["arm"]: a for a in arms}
    compared = [(a, by[a.get("baseline", "plain")]) for a in arms if a.get("baseline", "plain") in by]
    compared = [(a, b) for a, b in compared if a is not b]
    if compared:
        lines += ["", "Difference to the baseline arm (points; plain training unless named):", "",
                  "| arm | baseline | " + " | ".join(f"exit {i}" for i in range(k)) + " |",
                  "|---|---|" + "---|" * k]  # fmt: skip
        for a, b in compared:
            pairs = zip(a["test_exit_accuracy"], b["test_exit_accuracy"], strict=True)
            d = [100 * (x - y) for x, y in pairs]
            lines.append(f"| {a['label']} | {b['label']} | " + " | ".join(f"{v:+.2f}" for v in d) + " |")
    budgets = sorted({r["budget"] for a in arms for r in a["budgets"]})
    lines += [
        "",
        "Budgeted (thresholds fitted on the validation part, scored on the test part): test accuracy"
        " (%) at the measured mean compute fraction, geometric (MSDNet's scheme) / optimised.",
        "",
        "| arm | " + " | ".join(f"budget {b}" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for a in arms:
        rows = {r["budget"]: r for r in a["budgets"]}
        cells = [
            f"{_pct(rows[b]['geometric']['accuracy'])} @{rows[b]['geometric']['compute']:.2f} / "
            f"{_pct(rows[b]['optimised']['accuracy'])} @{rows[b]['optimised']['compute']:.2f}"
            if b in rows
            else "-"
            for b in budgets
        ]
        lines.append(f"| {a['label']} | " + " | ".join(cells) + " |")
    return lines


def _errors(row: dict[str, Any]) -> str:
    """``3 (HTTP 503: 2, ConnectionResetError: 1)``; older results have no kinds."""
    kinds = row.get("error_kinds") or {}
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items()))
    return f"{row['errors']} ({detail})" if detail else str(row["errors"])


def serving_tables(serving: dict[str, Any]) -> list[str]:
    loads = serving["loads"]
    pkg = serving.get("package")
    served = (
        f"Package served: `{pkg['path']}` ({pkg['name']}, {pkg['exits']} exits, default budget "
        f"{pkg['default_budget']}); its own held test part. "
        if isinstance(pkg, dict)
        else ""
    )
    lines = [
        f"{served}HTTP (uvicorn on 127.0.0.1, torch backend, batching on, 1 intra-op thread), "
        f"{loads['images']} real labelled "
        "test images, one image per request.",
        "",
        "| loop | budget | clients / peak in flight | offered rate/s | requests | errors | images/s "
        "| p50 ms | p95 ms | p99 ms | accuracy % | mean compute |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in loads["closed_loop"] + loads["open_loop"]:
        rate = f"{r['offered_rate']:.1f}" if r["offered_rate"] else "-"
        lines.append(
            f"| {r['loop']} | {r['budget']} | {r['concurrency']} | {rate} | {r['requests']} | "
            f"{_errors(r)} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {_pct(r['accuracy'])} | {r['mean_compute_fraction']:.3f} |"
        )
    prof = loads.get("profile")
    if prof and "top_frames" in prof:
        lines += [
            "",
            f"Where the saturated server runs (py-spy, {prof['seconds']:.0f} s at budget 1.0, "
            f"{prof['images_per_s']:.1f} images/s during the profile; raw stacks: `{prof['raw']}`, "
            "written by the run, not kept in the repository). "
            "Share of non-idle samples per thread, then per leaf frame:",
            "",
            "| thread | share |",
            "|---|---|",
            *[f"| `{t}` | {100 * v:.1f}% |" for t, v in prof["threads"]],
            "",
            "| leaf frame | share |",
            "|---|---|",
            *[f"| `{f}` | {100 * v:.1f}% |" for f, v in prof["top_frames"]],
        ]
    elif prof:
        lines += ["", f"Profile failed: {prof.get('error')}"]
    if serving.get("grid"):
        lines += [
            "",
            "Backend x batching x mode (`benchmarks/serving.py` on the same package and test "
            "images, closed loop; `engine` = in-process, no HTTP):",
            "",
            "| mode | backend | batching | budget | clients | requests | images/s | p50 ms | p99 ms "
            "| compute |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in serving["grid"]:
            lines.append(
                f"| {r['mode']} | {r['backend']} | {r['batching']} | {r['budget']} | "
                f"{r['concurrency']} | "
                f"{r['requests']} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['mean_compute_fraction']:.3f} |"
            )
    return lines


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def target_lines(h: dict[str, Any]) -> list[str]:
    """The serving targets as sentences with their measured values."""
    out = []
    if s := h.get("speedup_within_half_point"):
        out.append(
            "- Fastest budget (HTTP images/s) within 0.5 point of the full model's accuracy: "
            f"{s['budget']} "
            f"({s['accuracy_delta_points']:+.2f} points), {s['throughput_ratio']:.2f}x the full "
            f"model's HTTP throughput; target >= 2x: {_verdict(s['throughput_ratio'] >= 2.0)}."
        )
    if p := h.get("p99_over_p50_at_half_load"):
        vals = {k: v for k, v in p.items() if k != "target"}
        cells = ", ".join(f"budget {k}: {v:.2f}" for k, v in vals.items())
        out.append(f"- p99 / p50 at half of saturation (open loop): {cells}; target < 3: "
                   f"{_verdict(all(v < 3 for v in vals.values()))}.")  # fmt: skip
    if r := h.get("http_over_engine"):
        vals = {k: v for k, v in r.items() if k != "target"}
        cells = ", ".join(f"{k}: {v:.2f}" for k, v in vals.items())
        out.append(f"- HTTP / in-process engine throughput: {cells}; target >= 0.8: "
                   f"{_verdict(all(v >= 0.8 for v in vals.values()))}.")  # fmt: skip
    if skipped := h.get("budgets_not_served"):
        out.append(f"- Budgets not served: {skipped}")
    return out


def render(results: dict[str, Any], out_dir: Path, repo: Path) -> str:
    """The whole BENCHMARKS.md text for ``results`` (written by :func:`benchmarks.pipeline.main`)."""
    meta = results["meta"]
    rel = (
        out_dir.resolve().relative_to(repo.resolve())
        if out_dir.resolve().is_relative_to(repo.resolve())
        else out_dir
    )
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks` (`make bench`); do not edit by hand.",
        "",
    ]
    if meta["quick"]:
        lines += [
            "> **Quick smoke run.** Tiny epochs and data subset: these numbers only show that the "
            "pipeline runs end to end. They are not evidence for or against any IMTA gain or serving "
            "target. The full command is below.",
            "",
        ]
    lines += [
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine']}" + _load(meta),
        f"- date (UTC): {meta['date']}; git commit: `{meta['commit']}`",
        f"- results: `{rel}/results.json`; plots: `{rel}/ablation.png`, `{rel}/serving.png`",
        f"- full run: `{meta['full_command']}`",
        "",
    ]
    lines += [
        "How: `benchmarks/ablation.py` trains each arm with `python -m training train --resume` "
        "(arms differ only in `--ge/--isc/--kd/--recipe`), then `calibrate` (thresholds fitted on "
        "the validation part, scored on the test part). The serving part serves the shipped model "
        "(`packages/default`; a quick run: the GE + ISC + KD arm's package; `--serve-package`) with "
        "`python -m service` on 127.0.0.1; `benchmarks/loadgen.py` sends its "
        "held-out test images one per request, closed loop (fixed clients) and open loop (Poisson "
        "arrivals, latency from the scheduled arrival), bounded by requests and seconds.",
        "",
    ]
    if results.get("ablation"):
        lines += ["## IMTA ablation", "", meta["ablation_note"], ""]
        lines += [*ablation_tables(results["ablation"]), "", f"![ablation]({rel}/ablation.png)", ""]
    if IMTA_SECTION.is_file():
        lines += [IMTA_SECTION.read_text().rstrip(), ""]
    if results.get("serving"):
        lines += ["## Serving", "", *serving_tables(results["serving"]), ""]
        lines += [f"![serving]({rel}/serving.png)", "", "### Targets", ""]
        lines += [*target_lines(results["serving"]["headline"]), ""]
    if results.get("findings"):
        lines += ["## Findings", "", *[f"- {f}" for f in results["findings"]], ""]
    lines += section_if_measured(out_dir)  # peers.json: `python -m benchmarks --only peers`
    if ENGINE_MODES.is_file():
        lines += [
            "## Engine modes (from `benchmarks/results/engine_modes.md`)",
            "",
            ENGINE_MODES.read_text(),
        ]
    return "\n".join(lines).rstrip() + "\n"
