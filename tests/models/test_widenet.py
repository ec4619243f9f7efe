"""WideNet: its whitening stem, fixed BatchNorm scales, exits and the documented sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models import create_model
from models.flops import cumulative_flops
from models.onnx_export import export_stages
from models.quantize import QuantizeConfig, quantize_stage
from models.widenet import WHITEN_WIDTH


def test_whitening_stem_decorrelates_patches() -> None:
    g = torch.Generator().manual_seed(0)
    # Correlated channels: a shared component plus small noise, as natural images have.
    base = torch.randn(64, 1, 16, 16, generator=g)
    images = base.repeat(1, 3, 1, 1) + 0.1 * torch.randn(64, 3, 16, 16, generator=g)
    model = create_model("widenet", groups=((16, 1, True),))
    model.init_from_data(images)
    with torch.no_grad():
        out = model.stem[0](images)  # [64, 24, 15, 15], before the GELU
    half = out[:, : WHITEN_WIDTH // 2].permute(0, 2, 3, 1).reshape(-1, WHITEN_WIDTH // 2)
    half = half - model.stem[0].bias[: WHITEN_WIDTH // 2]
    cov = half.T @ half / half.shape[0]
    # Whitened: unit variance in every direction whose eigenvalue is well above eps, no correlation.
    off_diagonal = cov - torch.diag(torch.diag(cov))
    assert off_diagonal.abs().max() < 1e-3
    assert torch.allclose(torch.diag(cov)[:4], torch.ones(4), atol=0.05)
    # The second half of the filters is the first half negated.
    w = model.stem[0].weight
    torch.testing.assert_close(w[WHITEN_WIDTH // 2 :], -w[: WHITEN_WIDTH // 2])


def test_fixed_parts_do_not_train() -> None:
    model = create_model("widenet")
    assert not model.stem[0].weight.requires_grad
    scales = [m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert scales and not any(s.requires_grad for s in scales)
    biases = [m.bias for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(b.requires_grad for b in biases)


def test_documented_sizes() -> None:
    # The airbench94 layout and the teacher (airbench95 layout), 32x32, in multiply-adds.
    assert cumulative_flops(create_model("widenet"), (32, 32))[-1] / 2e6 == pytest.approx(118.1, abs=0.1)
    teacher = create_model("widenet_teacher")
    assert cumulative_flops(teacher, (32, 32))[-1] / 2e6 == pytest.approx(301.6, abs=0.1)


def test_exits_follow_exit_after() -> None:
    model = create_model("widenet", exit_after=(0, 2))
    assert model.num_exits == 2
    out = model(torch.randn(2, 3, 32, 32))
    assert [o.shape for o in out] == [(2, 10), (2, 10)]
    with pytest.raises(ValueError, match="exit_after"):
        create_model("widenet", exit_after=(0, 1))  # the last group must carry an exit
    with pytest.raises(ValueError, match="depth"):
        create_model("widenet", groups=((16, 4, True),))


def test_stages_quantize_to_int8(tmp_path: Path) -> None:
    """ONNX Runtime's int8 pre-processing cannot follow opset 18's ReduceMax (the exits' global
    max-pool); quantization falls back to ONNX's shape inference and still writes every stage."""
    model = create_model("widenet", groups=((16, 1, True), (32, 1, True)), exit_after=(0, 1)).eval()
    graphs = export_stages(model, (32, 32), tmp_path)
    image = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    feeds = [{"image": image}]
    src, dst = tmp_path / graphs[0].file, tmp_path / "int8" / "stage_0.onnx"
    quantize_stage(src, dst, feeds, QuantizeConfig())
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert "QuantizeLinear" in ops and "ReduceMax" in ops
    fp32 = ort.InferenceSession(str(src)).run(["logits"], {"image": image})[0]
    int8 = ort.InferenceSession(str(dst)).run(["logits"], {"image": image})[0]
    assert int8.shape == fp32.shape == (4, 10)
    assert np.abs(int8 - fp32).max() < 0.1 * np.abs(fp32).max() + 1e-3
