"""The precision a package is served at: fp32, int8 (its quantized ONNX graphs) or bf16 (torch).

``choose_backend`` is the one place that decides, for ``--precision``:

- ``fp32``: the package's fp32 graphs or weights on the ``--backend`` asked for.
- ``int8``: the package's int8 graphs (``manifest.int8``, written by ``training quantize``) on
  ONNX Runtime, with the int8 budget table (thresholds fitted on int8 logits).
- ``bf16``: the torch backend with bfloat16 weights and activations (on a CPU: AMX or
  AVX512-BF16 where the CPU has them; emulated, and slow, where it does not).
- ``auto``: int8 only where the package has it, its recorded accuracy on the test split is at
  most :data:`MAX_INT8_LOSS` below fp32's at every budget, and it is faster on this CPU (every
  stage timed on both at the engine's batch size, priced at budget 1.0 and the default budget's
  exit shares); otherwise fp32. One log line says which and why.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import torch

from models.multi_exit import State
from models.package import Manifest, ModelPackage
from service.engine.backends import BackendError, OnnxBackend, StageBackend, build_backend
from service.settings import Precision

log = logging.getLogger("service.engine")

MAX_INT8_LOSS = 0.003  # 0.3 point of test accuracy, at every budget of the table


@dataclass(frozen=True)
class Served:
    """What a model is served with: the package as seen at that precision, and its backend."""

    package: ModelPackage
    backend: StageBackend
    precision: str


def at_int8(pkg: ModelPackage) -> ModelPackage:
    """``pkg`` with its int8 graphs and int8 budget table in place of the fp32 ones, so that the
    engine, the exit policy and ``/v1/models`` read the table that matches what runs."""
    q = pkg.manifest.int8
    if q is None:
        raise BackendError(f"{pkg.manifest.name}: the package has no int8 graphs")
    manifest = pkg.manifest.model_copy(update={"onnx": q.onnx, "budgets": q.budgets})
    return replace(pkg, manifest=manifest, onnx_paths=[pkg.root / g.file for g in q.onnx])


def int8_accuracy_loss(m: Manifest) -> dict[float, float]:
    """Per budget of the table: fp32 test accuracy minus int8's (points as fractions).

    The full network (the last exit) counts as budget 1.0 when the table has no 1.0 row.
    """
    assert m.int8 is not None
    int8 = {r.budget: r.accuracy for r in m.int8.budgets}
    loss = {
        r.budget: r.accuracy - q
        for r in m.budgets
        if r.accuracy is not None and (q := int8.get(r.budget)) is not None
    }
    final = m.provenance.metrics.get("test_exit_accuracy")
    if 1.0 not in loss and final:
        loss[1.0] = float(final[-1]) - m.int8.exit_accuracy[-1]
    return loss


def int8_refusal(m: Manifest) -> str | None:
    """Why ``auto`` may not serve the package's int8 graphs (``None``: it may, if faster)."""
    if m.int8 is None:
        return "the package has no int8 graphs"
    loss = int8_accuracy_loss(m)
    if not loss:
        return "the package records no test accuracy to compare int8 with fp32"
    worst = max(loss, key=lambda b: loss[b])
    if loss[worst] > MAX_INT8_LOSS:
        return (
            f"int8 loses {100 * loss[worst]:.2f} points at budget {worst} "
            f"(allowed: {100 * MAX_INT8_LOSS:.1f})"
        )
    return None


def stage_seconds(backend: StageBackend, num_exits: int, shape: tuple[int, ...]) -> list[float]:
    """Median seconds of each stage on a random batch of ``shape`` (5 runs after one warm-up)."""
    runs: list[list[float]] = [[] for _ in range(num_exits)]
    x = torch.randn(*shape)
    for i in range(6):
        state: State = (x,)
        for k in range(num_exits):
            t0 = time.perf_counter()
            state, logits = backend.run_stage(k, state)
            logits.cpu()
            if i > 0:
                runs[k].append(time.perf_counter() - t0)
    return [sorted(r)[len(r) // 2] for r in runs]


def priced(stage_s: list[float], m: Manifest, budget: float) -> float:
    """Seconds per batch at ``budget``: each stage's time times the share of images reaching it
    (the exit shares of the row ``budget`` runs with; no row: every image runs every stage)."""
    try:
        row = m.budget_entry(budget)
    except KeyError:
        return sum(stage_s)
    if row.exit_fractions is None:
        return sum(stage_s)
    reach, total = 1.0, 0.0
    for t, leaving in zip(stage_s, row.exit_fractions, strict=True):
        total += reach * t
        reach -= leaving
    return total


def choose_backend(
    pkg: ModelPackage,
    precision: Precision,
    backend: str,
    device: str,
    threads: int,
    buckets: tuple[int, ...],
    batch: int,
    default_budget: float,
    cuda_dtype: str = "float32",
) -> Served:
    """The backend and package view for ``precision`` (module docstring).

    Args:
        backend: ``torch`` | ``onnxruntime`` | ``auto`` (``build_backend``).
        batch: the engine's batch size, at which ``auto`` times the stages.
        default_budget: the budget requests get when they name none (``auto`` prices it).
        cuda_dtype: the torch backend's compute dtype on CUDA (``torch.dtype``) at fp32/auto.

    Raises:
        BackendError: the precision cannot run here (no int8 graphs, int8 on the torch backend,
            bf16 on onnxruntime).
    """
    if precision == "int8":
        if backend == "torch":
            raise BackendError("int8 runs the package's int8 ONNX graphs: use backend onnxruntime")
        served = at_int8(pkg)
        return Served(served, _onnx(served, device, threads), "int8")
    if precision == "bf16":
        if backend == "onnxruntime":
            raise BackendError("bf16 runs on the torch backend: use backend torch or auto")
        return Served(pkg, build_backend(pkg, "torch", device, "bfloat16", threads, buckets), "bf16")
    dtype = cuda_dtype if device == "cuda" else "float32"
    built = build_backend(pkg, backend, device, dtype, threads, buckets)
    fp32 = Served(pkg, built, _LABELS.get(str(getattr(built, "dtype", "")), "fp32"))
    if precision == "fp32":
        return fp32
    refusal = int8_refusal(pkg.manifest)
    if refusal is None and backend == "torch":
        refusal = "backend torch runs no int8 graphs"
    if refusal is None and device != "cpu":
        refusal = f"int8 graphs are for the CPU, not {device}"
    if refusal is not None:
        log.info("precision auto -> fp32 (%s)", refusal)
        return fp32
    int8_pkg = at_int8(pkg)
    int8 = Served(int8_pkg, _onnx(int8_pkg, device, threads), "int8")
    h, w = pkg.manifest.preprocessing.input_size
    k = pkg.manifest.num_exits
    budgets = sorted({1.0, default_budget})
    cost = [
        [priced(stage_seconds(s.backend, k, (batch, 3, h, w)), s.package.manifest, b) for b in budgets]
        for s in (fp32, int8)
    ]
    faster = all(q < f for f, q in zip(*cost, strict=True))
    figures = ", ".join(
        f"budget {b}: {1e3 * f / batch:.3f} vs {1e3 * q / batch:.3f} ms/image"
        for b, f, q in zip(budgets, *cost, strict=True)
    )
    loss = max(int8_accuracy_loss(pkg.manifest).values())
    chosen = int8 if faster else fp32
    log.info(
        "precision auto -> %s (int8 loses at most %.2f points of test accuracy; %s fp32 vs "
        "onnxruntime int8, batch %d: %s)",
        chosen.precision,
        100 * loss,
        fp32.backend.name,
        batch,
        figures,
    )
    return chosen


_LABELS = {"torch.float16": "fp16", "torch.bfloat16": "bf16"}


def _onnx(pkg: ModelPackage, device: str, threads: int) -> OnnxBackend:
    return OnnxBackend(pkg.onnx_paths, device, [g.inputs for g in pkg.manifest.onnx], threads)
