"""A package's full network as a peer serves it: JPEG bytes in, the last exit's class out.

Runs inside the peers' virtual environments: it imports ``models`` (torch, pydantic,
safetensors) from this repository and nothing of ``service``. ``graphs`` picks what runs: the
rebuilt torch model, or the package's fp32 or int8 ONNX stage graphs one after another on ONNX
Runtime (the same graphs this service runs at that precision).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.package import ModelPackage, load_package


class FullNetwork:
    """The network of ``package`` on the CPU with ``threads`` intra-op threads."""

    def __init__(self, package: Path, threads: int, graphs: str = "torch") -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        pkg = load_package(package)
        self.model = pkg.model.eval()
        self.stages = [] if graphs == "torch" else onnx_stages(pkg, graphs, threads)
        pre = pkg.manifest.preprocessing
        self.size = (pre.input_size[1], pre.input_size[0])  # PIL's (W, H)
        self.mean = np.array(pre.mean, dtype=np.float32)
        self.std = np.array(pre.std, dtype=np.float32)
        self.name = pkg.manifest.name

    def tensor(self, jpeg: bytes) -> np.ndarray:
        """One encoded image -> normalised ``[3, H, W]`` float32 (the service's preprocessing
        for packages without a ``resize``: straight to the input size)."""
        img = Image.open(io.BytesIO(jpeg)).convert("RGB")
        if img.size != self.size:
            img = img.resize(self.size, Image.Resampling.BILINEAR)
        arr = (np.asarray(img, dtype=np.float32) / 255.0 - self.mean) / self.std
        return arr.transpose(2, 0, 1)

    @torch.inference_mode()
    def classify(self, jpegs: list[bytes]) -> list[int]:
        """Class index of every image from the last exit (every stage runs: the full network)."""
        x = np.stack([self.tensor(b) for b in jpegs])
        if not self.stages:
            return [int(c) for c in self.model(torch.from_numpy(x))[-1].argmax(1)]
        state = [x]
        for session, names in self.stages:
            *state, logits = session.run(None, dict(zip(names, state, strict=True)))
        return [int(c) for c in logits.argmax(1)]


def onnx_stages(pkg: ModelPackage, graphs: str, threads: int) -> list[tuple[Any, list[str]]]:
    """ONNX Runtime sessions of the package's ``fp32`` or ``int8`` stage graphs, in order."""
    import onnxruntime as ort

    m = pkg.manifest
    chosen = m.onnx if graphs == "fp32" else (m.int8.onnx if m.int8 is not None else [])
    if not chosen:
        raise SystemExit(f"error: {pkg.root} has no {graphs} ONNX graphs")
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    return [
        (ort.InferenceSession(str(pkg.root / g.file), opts, providers=["CPUExecutionProvider"]),
         g.inputs)
        for g in chosen
    ]  # fmt: skip


def peer_parser(doc: str, port: int, port_help: str | None = None) -> argparse.ArgumentParser:
    """The options both peers take: package, port, threads, graphs, batch size and instances."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--package", type=Path, required=True)
    p.add_argument("--port", type=int, default=port, help=port_help)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    p.add_argument(
        "--graphs", choices=["torch", "fp32", "int8"], default="torch",
        help="the torch model, or the package's fp32 or int8 ONNX graphs on ONNX Runtime",
    )  # fmt: skip
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument(
        "--instances", type=int, default=1,
        help="copies of the network serving at once (Triton model instances, LitServe workers)",
    )  # fmt: skip
    return p
