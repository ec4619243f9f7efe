"""The peers' full network runs the package's torch model or its fp32 / int8 ONNX graphs, and the
side by side hands them the graphs the service serves."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from benchmarks.harness import servers
from benchmarks.harness.engine import at_precision
from benchmarks.peers.full_network import FullNetwork, peer_parser
from benchmarks.side_by_side import PEERS, peer_specs, served_as, service_under_test
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


@pytest.mark.parametrize(
    ("precision", "backend", "graphs"),
    [("fp32", "torch", "torch"), ("int8", "onnxruntime", "int8"), ("auto", None, "int8")],
)
def test_side_by_side_starts_everyone_on_the_graphs_of_its_precision(
    int8_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    precision: str, backend: str | None, graphs: str,
) -> None:  # fmt: skip
    """The commands the side by side would start: the service at ``--precision`` on its backend
    (``auto``: no backend, precision or workers option: make serve's defaults), each peer with the
    graphs the service serves (under ``auto`` read from the running service, here int8) in as many
    instances as asked, which its own option parser reads back."""
    for peer in PEERS:  # stand-ins for the venvs `make peers` creates
        (tmp_path / peer / "bin").mkdir(parents=True)
        (tmp_path / peer / "bin" / "python").touch()
    monkeypatch.setattr(servers, "PEER_VENVS", tmp_path)
    args = argparse.Namespace(package=int8_package, precision=precision, workers=None,
                              no_peers=False, peer_threads=1, peer_instances=2,
                              served=("onnxruntime", "int8"))  # fmt: skip
    service = service_under_test(args)
    specs, points = peer_specs(args, "tiny-int8")
    if backend is None:
        assert not {"--backend", "--precision", "--workers", "--device"} & set(service.command)
    else:
        assert service.command[service.command.index("--backend") + 1] == backend
        assert service.command[service.command.index("--precision") + 1] == precision
        assert service.command[service.command.index("--workers") + 1] == "auto"
    assert [s.name for s in specs] == list(PEERS) and len(points) == 2 + len(PEERS)
    for spec in specs:
        assert spec.command[1:3] == ["-m", f"benchmarks.peers.{spec.name}_server"]
        parsed = peer_parser("", 0).parse_args(spec.command[3:])
        assert (parsed.graphs, parsed.package, parsed.instances) == (graphs, int8_package, 2)


def test_the_engine_point_runs_the_int8_graphs(int8_package: Path) -> None:
    pkg = load_package(int8_package)
    served = at_precision(pkg, "int8")
    assert pkg.manifest.int8 is not None
    assert served.onnx_paths == [pkg.root / g.file for g in pkg.manifest.int8.onnx]
    assert served.manifest.budgets == pkg.manifest.int8.budgets
    assert at_precision(pkg, "fp32") is pkg


def test_served_as_reads_backend_and_precision_from_the_running_service(
    int8_package: Path, tmp_path: Path
) -> None:
    """Under ``auto`` the peers follow what the service reports: its ``anytime_model_info``
    backend label and ``/v1/models``' precision."""
    spec = servers.service_spec(int8_package, "onnxruntime", ["--precision", "int8"])
    with servers.Server(spec, tmp_path / "service.log") as server:
        assert served_as(server.url, "tiny-int8") == ("onnxruntime", "int8")
