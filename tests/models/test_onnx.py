"""Every exported stage graph agrees with PyTorch under ONNX Runtime (CPU provider)."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.package import load_package
from tests.conftest import make_package

ATOL = 1e-4  # absolute, on logits and carried state


@pytest.mark.parametrize(("name", "isc"), [("msdnet", False), ("msdnet", True), ("resnet_exits", False)])
def test_stages_agree_with_pytorch(tmp_path: Path, name: str, isc: bool) -> None:
    pkg = load_package(make_package(tmp_path, name, isc=isc))
    model, size = pkg.model, pkg.manifest.preprocessing.input_size
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in pkg.onnx_paths]
    for batch in (1, 7):
        x = torch.randn(batch, 3, *size)
        state: tuple[torch.Tensor, ...] = (x,)
        for k, (sess, graph) in enumerate(zip(sessions, pkg.manifest.onnx, strict=True)):
            assert [i.name for i in sess.get_inputs()] == graph.inputs
            with torch.no_grad():
                ref = model.stage(k)(*state)
            got = sess.run(
                graph.outputs, {n: t.numpy() for n, t in zip(graph.inputs, state, strict=True)}
            )
            assert len(got) == len(ref)
            for r, g in zip(ref, got, strict=True):
                assert g.shape == tuple(r.shape)
                np.testing.assert_allclose(g, r.numpy(), atol=ATOL, rtol=0)
            state = tuple(ref[:-1])
