"""int8 stage graphs: ONNX Runtime static quantization of a package's per-stage fp32 graphs.

Each ``onnx/stage_k.onnx`` becomes ``onnx/int8/stage_k.onnx`` with the same inputs and outputs
(fp32 at the boundary, so the service, the carried state and the exit rule do not change):

1. ``quant_pre_process``: ONNX Runtime's symbolic shape inference (ONNX's own where it cannot
   follow a graph) and graph optimisation (batch norms folded into convolutions, constants
   folded), so the quantizer sees the graph ORT runs.
2. ``quantize_static`` in QDQ format: weights int8 per output channel (symmetric), activations
   uint8 per tensor (asymmetric), ranges calibrated on the stage's real inputs. U8S8 is the
   combination ORT's x86 kernels are fastest at; signed activations (S8S8) ran at 0.79x the
   speed of fp32 on this project's CPU, unsigned ones faster than fp32 (docs/engine.md).

Stage k's calibration inputs are what the fp32 stages 0..k-1 make of the calibration images, so
every stage is calibrated on the distribution it will see when it follows fp32 or int8 stages.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

INT8_DIR = "onnx/int8"

Feeds = dict[str, np.ndarray]


class QuantizeConfig(BaseModel):
    """How the int8 graphs are made; recorded in the manifest next to them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["QDQ"] = "QDQ"
    activations: Literal["uint8", "int8"] = Field(
        "uint8", description="activation type (uint8: ORT's fast U8S8 kernels on x86)"
    )
    weights: Literal["int8"] = "int8"
    per_channel: bool = Field(True, description="one weight scale per output channel")
    reduce_range: bool = Field(
        True,
        description="7-bit weights. x86 CPUs without VNNI multiply uint8 x int8 with VPMADDUBSW, "
        "whose int16 sums of two products saturate at 8-bit weights: on an AVX2 CPU, exit 0 lost "
        "0.8 point (95 % agreement with fp32) at 8 bits, 0.0 point (99.2 %) at 7 (docs/engine.md)",
    )
    method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="how activation ranges come from the calibration tensors"
    )
    calibration_images: int = Field(
        500, ge=1, description="images of the validation split the ranges are measured on"
    )
    batch_size: int = Field(50, ge=1, description="images per calibration batch")
    fp32_below_channels: int = Field(
        8,
        ge=0,
        description="convolutions with fewer input or output channels than this stay fp32: ORT's "
        "int8 convolution is slower than its fp32 one on such narrow layers (docs/engine.md)",
    )


def stage_feeds(
    sessions: Sequence[Any], input_names: Sequence[Sequence[str]], images: np.ndarray, batch: int
) -> Iterator[list[Feeds]]:
    """Every stage's input feeds on ``images [N, 3, H, W]`` (normalised, float32), in batches.

    Yields one list per batch: ``feeds[k]`` is stage k's ``{input name: array}``, where stage k's
    inputs are stage k-1's ``state_out`` tensors (``sessions``: ONNX Runtime sessions in order).
    """
    for start in range(0, len(images), batch):
        state: list[np.ndarray] = [np.ascontiguousarray(images[start : start + batch])]
        feeds: list[Feeds] = []
        for k, session in enumerate(sessions):
            feeds.append(dict(zip(input_names[k], state, strict=True)))
            if k + 1 < len(sessions):
                state = session.run(None, feeds[-1])[:-1]  # every output but the logits
        yield feeds


def calibration_feeds(
    fp32_paths: Sequence[Path], input_names: Sequence[Sequence[str]], images: np.ndarray, batch: int
) -> list[list[Feeds]]:
    """``feeds[k]``: stage k's input batches on ``images`` through the fp32 graphs."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in fp32_paths]
    per_stage: list[list[Feeds]] = [[] for _ in fp32_paths]
    for batch_feeds in stage_feeds(sessions, input_names, images, batch):
        for k, f in enumerate(batch_feeds):
            per_stage[k].append(f)
    return per_stage


def quantize_stage(src: Path, dst: Path, feeds: list[Feeds], config: QuantizeConfig) -> None:
    """Write the int8 QDQ graph of the fp32 stage graph ``src`` to ``dst``, ranges from ``feeds``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> Feeds | None:
            return next(self.it, None)

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    act = QuantType.QUInt8 if config.activations == "uint8" else QuantType.QInt8
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="anytime-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre))
        except TypeError:
            # ORT's symbolic shape inference has no rule for opset 18's ReduceMax (axes as an
            # input: WideNet's global max-pool exits) and fails on the nodes after it; ONNX's own
            # shape inference, which it also runs, covers every op these graphs hold.
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=act,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[config.method],
            nodes_to_exclude=narrow_convs(pre, config.fp32_below_channels),
            extra_options={"CalibTensorRangeSymmetric": False},
        )


def narrow_convs(path: Path, channels: int) -> list[str]:
    """Names of the graph's convolutions with fewer than ``channels`` input (per group) or
    output channels."""
    import onnx

    model = onnx.load(str(path))
    weights = {w.name: tuple(w.dims) for w in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Conv" and n.input[1] in weights and min(weights[n.input[1]][:2]) < channels
    ]


def quantize_stages(
    fp32_paths: Sequence[Path],
    input_names: Sequence[Sequence[str]],
    images: np.ndarray,
    config: QuantizeConfig,
    out_dir: Path,
) -> list[Path]:
    """Quantize every stage graph into ``out_dir`` (same file names); returns the new paths.

    Args:
        images: calibration images ``[N, 3, H, W]``, normalised float32 (the validation split).
    """
    feeds = calibration_feeds(
        fp32_paths, input_names, images[: config.calibration_images], config.batch_size
    )
    out = [out_dir / p.name for p in fp32_paths]
    for src, dst, stage_feeds_k in zip(fp32_paths, out, feeds, strict=True):
        quantize_stage(src, dst, stage_feeds_k, config)
    return out


def stage_logits(
    paths: Sequence[Path], input_names: Sequence[Sequence[str]], images: np.ndarray, batch: int = 250
) -> np.ndarray:
    """Every exit's logits ``[K, N, C]`` on ``images [N, 3, H, W]`` through the stage graphs."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in paths]
    per_exit: list[list[np.ndarray]] = [[] for _ in paths]
    for start in range(0, len(images), batch):
        state: list[np.ndarray] = [np.ascontiguousarray(images[start : start + batch])]
        for k, session in enumerate(sessions):
            *state, logits = session.run(None, dict(zip(input_names[k], state, strict=True)))
            per_exit[k].append(logits)
    return np.stack([np.concatenate(chunks) for chunks in per_exit])
