"""A package's full network as a peer serves it: JPEG bytes in, the last exit's class out.

Runs inside the peers' virtual environments: it imports ``models`` (torch, pydantic,
safetensors) from this repository and nothing of ``service``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.package import load_package


class FullNetwork:
    """The rebuilt model of ``package`` on the CPU with ``threads`` intra-op threads."""

    def __init__(self, package: Path, threads: int) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        pkg = load_package(package)
        self.model = pkg.model.eval()
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
        x = torch.from_numpy(np.stack([self.tensor(b) for b in jpegs]))
        return [int(c) for c in self.model(x)[-1].argmax(1)]
