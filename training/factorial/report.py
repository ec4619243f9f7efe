"""The IMTA section of BENCHMARKS.md, rendered from ``imta_stats.json`` (docs/imta.md's rule).

``render_section`` returns the markdown; ``update_benchmarks`` puts it into BENCHMARKS.md in place
of the previous IMTA section (or before the serving section), leaving the rest of the file alone.
The same text is kept in ``benchmarks/results/imta.md``, which ``benchmarks/report.py`` includes
whenever it regenerates the whole of BENCHMARKS.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from training.factorial.analysis import ARM_NAMES
from training.markdown import table

HEADING = "## IMTA factorial"
COMMANDS = (
    "python -m training ablation run --plan configs/imta/factorial.yaml  # train, resumable\n"
    "python -m training factorial evaluate\n"
    "python -m training factorial report"
)
VERDICTS = {
    "gain at every exit": "IMTA beats plain multi-exit training here: the seed-averaged mean-over-"
    "exits difference is positive with its 95 % interval above zero, and no exit is below plain. "
    "This reproduces the direction the paper reports.",
    "gain on average, not at every exit": "IMTA beats plain training on the mean over exits (95 % "
    "interval above zero) but not at every exit, so the paper's claim of a gain at every exit is "
    "not reproduced here.",
    "loss": "IMTA is worse than plain multi-exit training here: the mean-over-exits difference has "
    "its 95 % interval below zero. The paper's gains are not reproduced at this scale.",
    "no detectable difference": "No difference between IMTA and plain training is detectable: the "
    "95 % interval of the mean-over-exits difference contains zero. The paper's gains are not "
    "shown here; differences outside the interval are excluded at this scale.",
    "no result": "No seed has both IMTA and plain training finished yet.",
}


def _pts(v: float) -> str:
    return f"{100 * v:+.2f}"


def _p(v: float, resamples: int | None = None) -> str:
    """A p-value; a bootstrap p of 0 means below one resample's share."""
    if resamples is not None and v == 0:
        return f"< {1 / resamples:.0e}"
    return f"{v:.3f}" if v >= 0.001 else f"{v:.0e}"


def accuracy_table(stats: dict[str, Any]) -> list[str]:
    runs = stats["runs"]
    k, rows = len(runs[0]["test_accuracy"]), []
    for arm in ARM_NAMES:
        mine = [(str(r["seed"]), r["test_accuracy"]) for r in sorted(runs, key=lambda r: r["seed"])
                if r["arm"] == arm]  # fmt: skip
        if len(mine) > 1:
            mine.append(
                ("**mean**", [sum(c) / len(mine) for c in zip(*(a for _, a in mine), strict=True)])
            )
        rows += [(f"`{arm}`", seed, *(f"{100 * a:.2f}" for a in acc), f"{100 * sum(acc) / k:.2f}")
                 for seed, acc in mine]  # fmt: skip
    exits = [f"exit {i} ({m:.1f}M)" for i, m in enumerate(runs[0]["madds"])]
    return table(("arm", "seed", *exits, "mean"), rows)


def comparison_table(c: dict[str, Any], resamples: int) -> list[str]:
    """Per exit and for the mean over exits: the pooled difference, its bootstrap interval, the
    McNemar p (pooled over seeds; Holm over exits), and each seed's difference beside it."""
    seeds = c["per_seed"]
    rows = [
        (i, _pts(e["estimate"]), f"[{_pts(e['low'])}, {_pts(e['high'])}]",
         f"{_p(e['mcnemar_p'])} ({_p(e['mcnemar_p_holm'])})",
         *(f"{_pts(s['difference'][i])} ({_p(s['mcnemar_p'][i])})" for s in seeds))
        for i, e in enumerate(c["exits"])
    ]  # fmt: skip
    m = c["mean_over_exits"]
    rows.append(("**mean**", f"**{_pts(m['estimate'])}**", f"[{_pts(m['low'])}, {_pts(m['high'])}]",
                 f"bootstrap {_p(m['bootstrap_p'], resamples)}",
                 *(_pts(s["mean_difference"]) for s in seeds)))  # fmt: skip
    head = ("exit", f"{c['a']} − {c['b']} (points)", "95 % CI", "McNemar p (Holm)")
    return table((*head, *(f"seed {s['seed']} (p)" for s in seeds)), rows)


def verdict_paragraph(stats: dict[str, Any]) -> str:
    v = stats["verdict"]
    text = VERDICTS[v["outcome"]]
    primary = next((c for c in stats["comparisons"] if c["role"].startswith("primary")), None)
    if primary is not None:
        m = primary["mean_over_exits"]
        per_exit = ", ".join(_pts(e["estimate"]) for e in primary["exits"])
        p = _p(m["bootstrap_p"], stats["resamples"])
        text += (
            f" IMTA − plain, mean over exits: {_pts(m['estimate'])} points (95 % CI "
            f"[{_pts(m['low'])}, {_pts(m['high'])}], bootstrap p = {p}); per exit {per_exit}."
        )
        worse, better = v["exits_significantly_worse"], v["exits_significantly_better"]
        if better or worse:
            text += f" McNemar (Holm, α = {stats['alpha']}): better at exits {better or 'none'}, "
            text += f"worse at exits {worse or 'none'}."
    if v["partial"]:
        needed = max(len(v["planned_seeds"]), 2)  # the rule needs every planned seed, two at least
        text = (
            f"**Partial result ({len(v['seeds'])} of the {needed} seeds the rule needs): "
            f"not the pre-registered verdict.** " + text
        )
    return text


def render_section(stats: dict[str, Any], plots: str) -> str:
    """The markdown of the section; ``plots``: the plot folder as seen from BENCHMARKS.md."""
    unfinished = sorted(set(stats["planned"]) - set(stats["finished"]))
    lines = [
        f"{HEADING} (plain / GE / lr_scaled × stage 2 ISC + KD)",
        "",
        "Pre-registered in `docs/imta.md` (protocol, tests, decision rule). Last epoch of every run "
        f"(no model selection), {stats['n_eval']:,} held-back test images; budgeted thresholds "
        "fitted on the validation images only. Stage 1: "
        f"{stats['epochs']} epoch{'s' if stats['epochs'] != 1 else ''}; stage 2 as long. Generated by:",
        "",
        "```",
        COMMANDS,
        "```",
        "",
        f"Finished runs: {len(stats['finished'])} of {len(stats['planned'])}"
        + (f" (not finished: {', '.join(unfinished)})" if unfinished else "")
        + (f"; overrides: `{' '.join(stats['overrides'])}`" if stats.get("overrides") else "")
        + ".",
        "",
        "### Verdict",
        "",
        verdict_paragraph(stats),
        "",
        "### Per-exit test accuracy (%)",
        "",
        *accuracy_table(stats),
        "",
        f"### Comparisons (points; CI: paired bootstrap over seeds and images, {stats['resamples']:,} "
        "resamples; p: exact McNemar on the discordant images summed over seeds)",
        "",
    ]
    for c in stats["comparisons"]:
        lines += [f"**{c['role']}** — `{c['a']}` vs `{c['b']}`, seeds {c['seeds']}", ""]
        lines += [*comparison_table(c, stats["resamples"]), ""]
    lines += [
        f"![anytime]({plots}/anytime.png) ![budgeted]({plots}/budgeted.png)",
        "",
    ]
    if any(r["norms"] for r in stats["runs"]):
        lines += [f"![per-block norms]({plots}/norms.png)", ""]
    return "\n".join(lines)


def update_benchmarks(markdown: Path, section: str) -> None:
    """Replace the IMTA section of ``markdown`` (up to the next ``## `` heading), or insert it
    before the serving section (at the end when there is none)."""
    text = markdown.read_text() if markdown.is_file() else "# Benchmarks\n"
    block = section.rstrip() + "\n\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    elif "\n## Serving" in text:
        text = text.replace("\n## Serving", "\n" + block + "## Serving", 1)
    else:
        text = text.rstrip() + "\n\n" + block
    markdown.write_text(text.rstrip() + "\n")
