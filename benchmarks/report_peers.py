"""The side-by-side section of ``BENCHMARKS.md`` from ``peers.json`` (``benchmarks/side_by_side.py``)
and the request-cost table from ``profile_components.json`` (``benchmarks/profile.py``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.profile import markdown as profile_markdown

TARGETS = (  # (ratio key, wanted at least, what it compares)
    ("http_b05_over_b10", 1.6, "HTTP budget 0.5 / budget 1.0"),
    ("http_b05_over_better_peer", 1.5, "HTTP budget 0.5 / the better peer"),
    ("http_b10_over_better_peer", 1.0, "HTTP budget 1.0 / the better peer"),
    ("http_b10_over_engine_b10", 0.8, "HTTP budget 1.0 / in-process engine budget 1.0"),
)


def _num(v: Any, fmt: str = ".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


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
        verdict = "met" if d >= -0.5 else "**missed**"
        out.append(f"{d:+.2f} points on the whole held test part (target within 0.5: {verdict})")
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
        text += (
            f"; {len(longer)} of {len(runs)} runs were run again with a longer warm-up, up to "
            f"{max(longer):.1f} s, because wrk's threads were still starting"
        )
    return text + ")"


def ratio_lines(
    ratios: dict[str, Any],
    rows: dict[str, Any] | None = None,
    package_accuracy: dict[str, float] | None = None,
) -> list[str]:
    """The ratios as sentences, each with its target and whether this run met it."""
    out = []
    for key, wanted, what in TARGETS:
        if key not in ratios:
            continue
        v = ratios[key]
        verdict = "met" if v >= wanted else "**missed**"
        extra = f" ({ratios['better_peer']})" if key.endswith("better_peer") else ""
        line = f"- {what}: {v:.2f}{extra}; target >= {wanted}: {verdict}"
        if key == "http_b05_over_b10":
            line += _accuracy_line(rows or {}, package_accuracy)
        out.append(line + ".")
    if "http_b05_over_engine_b05" in ratios:
        v = ratios["http_b05_over_engine_b05"]
        out.append(f"- HTTP budget 0.5 / in-process engine budget 0.5: {v:.2f}.")
    return out


def peers_section(peers: dict[str, Any], profile: dict[str, Any] | None = None) -> list[str]:
    """Markdown lines: setting, the side-by-side table, the ratios, the request-cost table."""
    meta, s = peers["meta"], peers["settings"]
    lines = [
        "## Side by side: this service, Triton and LitServe",
        "",
        f"- command: `{meta['command']}` (`make bench-peers`); {meta['date']} UTC, commit "
        f"`{meta['commit']}`; {meta['machine']}",
        f"- load on the machine: `{meta['uptime_before']}` before, `{meta['uptime_after']}` after"
        + (
            " (the cores were shared with other work: timings are noisy, ratios within the run "
            "are the figures to read)"
            if max(meta.get("loadavg_1m", [0.0])) > 1.5
            else ""
        ),
        f"- wrk, {s['connections']} connections (one thread each), {s['seconds']:.0f} s per run"
        + _warmup_text(s, peers["rows"])
        + ", "
        f"{s['repeats']} runs per row round-robin (median shown, range in brackets); "
        f"{s['images']} held test JPEGs of `{s['package']}`, one per request, every answer "
        "scored against its label (`benchmarks/wrk/classify.lua`)",
        f"- this service: {s['service']}; peers: {s['peers']}; the in-process engine: same "
        "engine settings, one image per request from 16 concurrent clients, decoded in the process",
        "",
        "| server | request body | images/s | p50 ms | p99 ms | accuracy % (± s.e.) | answers | failed "
        "| server CPU ms/image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in peers["rows"].items():
        lo, hi = r.get("images_per_s_range", [None, None])
        acc = r.get("accuracy")
        lines.append(
            f"| {label} | {r['body']} | {_num(r['images_per_s'])} ({_num(lo)}-{_num(hi)}) | "
            f"{_num(r.get('p50_ms'))} | {_num(r.get('p99_ms'))} | "
            f"{_accuracy(acc, r.get('answers'))} | {r.get('answers', '-')} | "
            f"{r.get('failed', '-')} | {_num(r.get('server_cpu_ms_per_image'), '.2f')} |"
        )
    lines += ["", *ratio_lines(peers["ratios"], peers["rows"], s.get("package_accuracy"))]
    if acc := s.get("package_accuracy"):
        cells = ", ".join(f"budget {b}: {100 * a:.2f} %" for b, a in acc.items())
        lines.append(
            f"- Accuracy on the whole held test part (the package's budget table): {cells}; the wrk "
            "accuracies above are over the answers of these short runs only (standard error shown)."
        )
    if profile:
        lines += [
            "",
            f"### CPU per one-image request, by component (budget {profile['budget']})",
            "",
            f"`python -m benchmarks.profile --budget {profile['budget']}`: "
            f"{profile['images_per_s']:.1f} images/s during a {profile['seconds']:.0f} s profile. "
            f"{profile['method']}",
            "",
            *profile_markdown(profile),
        ]
    return lines


def section_if_measured(out_dir: Path) -> list[str]:
    """:func:`peers_section` when ``out_dir`` holds ``peers.json``, else nothing."""
    peers = out_dir / "peers.json"
    if not peers.is_file():
        return []
    prof = out_dir / "profile_components.json"
    profile = json.loads(prof.read_text()) if prof.is_file() else None
    return [*peers_section(json.loads(peers.read_text()), profile), ""]
