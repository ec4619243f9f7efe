"""The served precision: the int8 view of a package, the auto rule, and what each precision runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from models.package import Manifest, load_package
from service.engine.backends import BackendError
from service.engine.precision import (
    MAX_INT8_LOSS,
    at_int8,
    choose_backend,
    int8_accuracy_loss,
    int8_refusal,
    priced,
)


def choose(path: Path, precision: str, backend: str = "auto") -> object:
    pkg = load_package(path)
    default = pkg.manifest.default_budget or 1.0
    return choose_backend(pkg, precision, backend, "cpu", 1, (), 8, default)  # type: ignore[arg-type]


def with_int8_loss(m: Manifest, loss: float, budget: float) -> Manifest:
    """``m`` with its int8 row for ``budget`` ``loss`` below the fp32 row's accuracy."""
    assert m.int8 is not None
    fp32 = {r.budget: r.accuracy for r in m.budgets}
    rows = [
        r.model_copy(update={"accuracy": fp32[r.budget] - loss}) if r.budget == budget else r
        for r in m.int8.budgets
    ]
    return m.model_copy(update={"int8": m.int8.model_copy(update={"budgets": rows})})


def test_the_int8_view_swaps_graphs_and_budget_table(int8_package: Path) -> None:
    pkg = load_package(int8_package)
    view = at_int8(pkg)
    assert pkg.manifest.int8 is not None
    assert view.manifest.budgets == pkg.manifest.int8.budgets
    assert view.manifest.onnx == pkg.manifest.int8.onnx
    assert view.onnx_paths == [int8_package / f"onnx/int8/stage_{k}.onnx" for k in range(3)]
    assert pkg.onnx_paths == [int8_package / f"onnx/stage_{k}.onnx" for k in range(3)]
    assert view.manifest.budgets != pkg.manifest.budgets  # thresholds fitted on other logits


def test_auto_refuses_int8_that_loses_more_than_the_limit(int8_package: Path) -> None:
    m = load_package(int8_package).manifest
    middle = m.budget_values[1]  # any row of the table counts, not only the ends
    assert int8_refusal(m) is None
    assert set(int8_accuracy_loss(m)) == set(m.budget_values)
    assert int8_refusal(with_int8_loss(m, MAX_INT8_LOSS - 1e-4, middle)) is None
    assert int8_refusal(with_int8_loss(m, 0.004, middle)) == (
        f"int8 loses 0.40 points at budget {middle} (allowed: 0.3)"
    )
    no_int8 = m.model_copy(update={"int8": None})
    assert int8_refusal(no_int8) == "the package has no int8 graphs"


def test_a_budget_is_priced_by_the_images_reaching_each_stage(int8_package: Path) -> None:
    m = load_package(int8_package).manifest
    for row in m.budgets:
        assert row.exit_fractions is not None
        a, b, _ = row.exit_fractions
        want = 1.0 + 2.0 * (1 - a) + 4.0 * (1 - a - b)
        assert priced([1.0, 2.0, 4.0], m, row.budget) == pytest.approx(want), row.budget
    # a budget between rows runs with the row below it (models.package.governing_row)
    low, high = m.budget_values[:2]
    assert priced([1.0, 2.0, 4.0], m, (low + high) / 2) == priced([1.0, 2.0, 4.0], m, low)
    without_shares = m.model_copy(update={"budgets": []})
    assert priced([1.0, 2.0, 4.0], without_shares, 1.0) == pytest.approx(7.0)


def test_precisions_that_cannot_run_say_why(int8_package: Path, package_dir: Path) -> None:
    with pytest.raises(BackendError, match="int8 runs the package's int8 ONNX graphs"):
        choose(int8_package, "int8", "torch")
    with pytest.raises(BackendError, match="bf16 runs on the torch backend"):
        choose(int8_package, "bf16", "onnxruntime")
    with pytest.raises(BackendError, match="the package has no int8 graphs"):
        choose(package_dir, "int8")


def test_auto_logs_its_choice_in_one_line(
    int8_package: Path, package_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "service.engine"):
        served = choose(package_dir, "auto")
    assert served.precision == "fp32"  # type: ignore[attr-defined]
    assert "precision auto -> fp32 (the package has no int8 graphs)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, "service.engine"):
        served = choose(int8_package, "auto", "torch")
    assert "precision auto -> fp32 (backend torch runs no int8 graphs)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, "service.engine"):
        served = choose(int8_package, "auto", "onnxruntime")
    lines = [r.message for r in caplog.records if r.message.startswith("precision auto")]
    default = load_package(int8_package).manifest.default_budget
    assert len(lines) == 1 and f"budget {default}:" in lines[0] and "budget 1.0:" in lines[0]
    chosen = served.precision  # type: ignore[attr-defined]
    assert lines[0].startswith(f"precision auto -> {chosen} (int8 loses at most")
    pkg = load_package(int8_package)
    table = pkg.manifest.int8.budgets if chosen == "int8" else pkg.manifest.budgets  # type: ignore[union-attr]
    assert served.package.manifest.budgets == table  # type: ignore[attr-defined]


def test_bf16_runs_the_torch_backend_in_bfloat16_on_the_cpu(int8_package: Path) -> None:
    served = choose(int8_package, "bf16")
    backend = served.backend  # type: ignore[attr-defined]
    assert served.precision == "bf16" and backend.name == "torch"  # type: ignore[attr-defined]
    assert backend.dtype == torch.bfloat16
    fp32 = choose(int8_package, "fp32", "torch").backend  # type: ignore[attr-defined]
    x = torch.randn(16, 3, 32, 32)
    (_, low), (_, high) = backend.run_stage(0, (x,)), fp32.run_stage(0, (x,))
    assert low.dtype == torch.float32  # logits come back as float32 whatever ran
    assert torch.allclose(low, high, atol=0.1, rtol=0.05)
