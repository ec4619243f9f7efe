"""The peers' full network runs the package's torch model or its fp32 / int8 ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.peers.full_network import FullNetwork
from models.package import load_package
from models.quantize import stage_logits
from tests.conftest import held_test_images


def test_peers_run_the_graphs_the_service_serves(int8_package: Path, package_dir: Path) -> None:
    pkg = load_package(int8_package)
    pngs, x = held_test_images(pkg, 32)
    m = pkg.manifest
    assert m.int8 is not None
    for graphs, stages in (("int8", m.int8.onnx), ("fp32", m.onnx)):
        want = stage_logits([pkg.root / g.file for g in stages], [g.inputs for g in m.onnx], x)
        got = FullNetwork(int8_package, 1, graphs).classify(pngs)
        assert got == want[-1].argmax(-1).tolist(), graphs
    with torch.no_grad():
        torch_classes = pkg.model(torch.from_numpy(x))[-1].argmax(1).tolist()
    assert FullNetwork(int8_package, 1).classify(pngs) == torch_classes
    with pytest.raises(SystemExit, match="has no int8 ONNX graphs"):
        FullNetwork(package_dir, 1, "int8")
