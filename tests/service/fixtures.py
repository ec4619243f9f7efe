"""Test data for the service: synthetic images, a calibrated tiny package, reference answers.

The tiny package is untrained, so its budget table is "calibrated" on the test images
themselves: thresholds at confidence quantiles, so that a budget below 1 really sends some
images out early and others deeper (what the batching and shrinking tests need to see).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.exit_policy import NEVER_EXIT, confidences, first_exit
from models.package import BudgetEntry, ModelPackage, load_package, new_manifest, save_package
from service.engine.work import ImageResult
from service.images import ImageLimits, images_to_batch
from service.policy import ExitPlan
from tests.conftest import CIFAR_PREPROCESSING, randomize_batchnorm, tiny_model

NAME = "tiny-calibrated"
LIMITS = ImageLimits(max_image_bytes=8 * 2**20, max_image_pixels=40_000_000)


def encode(img: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    """``img`` as a ``fmt`` file; ``options`` go to Pillow's encoder (JPEG ``quality``, ...)."""
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def sample_images(n: int, seed: int = 0) -> list[bytes]:
    """``n`` PNG images of assorted sizes: smooth colour fields plus noise (varied confidences)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(16, 64, size=2))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = rng.uniform(0, 255, size=3)
        slope = rng.uniform(-200, 200, size=(2, 3))
        arr = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
        arr = arr + rng.normal(0, 30, size=(h, w, 3))
        out.append(encode(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))))
    return out


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
    raw += struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 16)
    raw += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return raw + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def make_calibrated_package(root: Path, calibration: list[bytes], name: str = NAME) -> Path:
    """Export a tiny ISC MSDNet (3 exits, with ONNX) whose budget table splits ``calibration``.

    Budget 0.6: about half the images leave at exit 0, half of the rest at exit 1.
    Budget 0.8: about a fifth leave at exit 0. Budget 1.0: every image runs to the end.
    """
    torch.manual_seed(0)
    model, _ = tiny_model("msdnet", isc=True)
    randomize_batchnorm(model)
    model.eval()
    x = images_to_batch(calibration, CIFAR_PREPROCESSING, LIMITS)
    with torch.no_grad():
        conf = [confidences(logits)[0] for logits in model(x)]
    k = model.num_exits

    def q(exit_index: int, p: float) -> float:
        return float(torch.quantile(conf[exit_index], p))

    rows = [
        BudgetEntry(
            budget=0.6,
            thresholds=[q(0, 0.5), q(1, 0.5), 0.0],
            expected_compute_fraction=0.6,
            exit_fractions=[0.5, 0.25, 0.25],
        ),
        BudgetEntry(
            budget=0.8,
            thresholds=[q(0, 0.8), q(1, 0.8), 0.0],
            expected_compute_fraction=0.8,
            exit_fractions=[0.2, 0.16, 0.64],
        ),
        BudgetEntry(
            budget=1.0,
            thresholds=[NEVER_EXIT] * k,
            expected_compute_fraction=1.0,
            exit_fractions=[0.0, 0.0, 1.0],
        ),
    ]
    manifest = new_manifest(
        model,
        name=name,
        classes=[f"class_{i}" for i in range(model.num_classes)],
        preprocessing=CIFAR_PREPROCESSING,
        budgets=rows,
        default_budget=0.6,
    )
    return save_package(model, manifest, root / name)


@dataclass(frozen=True)
class Reference:
    """What the stage-wise model gives each image alone: exit, class, probabilities."""

    exit: int
    class_index: int
    probs: torch.Tensor


def reference_answers(pkg: ModelPackage, blobs: list[bytes], thresholds: list[float]) -> list[Reference]:
    """Per-image answers of the plain PyTorch model under the exit rule (no batching, no service)."""
    x = images_to_batch(blobs, pkg.manifest.preprocessing, LIMITS)
    with torch.no_grad():
        logits = pkg.model(x)
    conf = torch.stack([confidences(lg)[0] for lg in logits])
    exits = first_exit(conf, torch.tensor(thresholds))
    out = []
    for i, e in enumerate(exits.tolist()):
        probs = torch.softmax(logits[e][i], dim=-1)
        out.append(Reference(e, int(probs.argmax()), probs))
    return out


def rewrite_weights(package: Path, favour: int) -> None:
    """Retrain ``package`` in place, as a publisher would: every exit's bias pushes class
    ``favour`` far ahead (every image answers it), written beside under a hidden name and renamed
    into place, the manifest's checksum last."""
    import json

    from safetensors.torch import load_file, save_file

    from models.package import MANIFEST, sha256_file

    weights = load_file(package / "weights.safetensors")
    for name, tensor in weights.items():
        if name.startswith("exits.") and name.endswith(".linear.bias"):
            tensor[favour] += 100.0
    save_file(weights, package / ".weights.safetensors")
    (package / ".weights.safetensors").replace(package / "weights.safetensors")
    manifest = json.loads((package / MANIFEST).read_text())
    manifest["files"]["weights.safetensors"] = sha256_file(package / "weights.safetensors")
    (package / f".{MANIFEST}").write_text(json.dumps(manifest))
    (package / f".{MANIFEST}").replace(package / MANIFEST)


def load(path: Path) -> ModelPackage:
    return load_package(path)


_CACHE: dict[str, Path] = {}


def session_package(factory: object) -> Path:
    """The calibrated package, exported once per test process (unit and integration share it)."""
    if "pkg" not in _CACHE:
        import pytest

        assert isinstance(factory, pytest.TempPathFactory)
        _CACHE["pkg"] = make_calibrated_package(factory.mktemp("service-pkg"), sample_images(24))
    return _CACHE["pkg"]


def check_answers(
    pkg: ModelPackage, images: list[bytes], plan: ExitPlan, got: list[ImageResult]
) -> None:
    """Each image's answer is what the stage-wise model gives it alone."""
    thresholds = list(plan.thresholds)
    thresholds[plan.max_exit] = 0.0  # the deepest allowed exit takes everything left
    want = reference_answers(pkg, images, thresholds)
    assert [r.exit for r in got] == [min(w.exit, plan.max_exit) for w in want]
    for r, w in zip(got, want, strict=True):
        torch.testing.assert_close(torch.from_numpy(r.probs), w.probs, atol=1e-4, rtol=0)
        assert not r.deadline_exit
        assert r.compute_fraction == pkg.manifest.exits[r.exit].compute_fraction
