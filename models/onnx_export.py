"""Per-stage ONNX graphs: ``onnx/stage_k.onnx`` maps the carried state to the next state + logits.

Exported with the exporter torch recommends for 2.x (``torch.onnx.export(..., dynamo=True)``,
built on ``torch.export``), with a dynamic batch axis on every input and output so that the
service can run any stage on any number of surviving images.

Names: stage 0 reads ``image``; stage k > 0 reads ``state_in_0..``; every stage writes
``state_out_0..`` (absent for the last stage) and ``logits``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from pydantic import BaseModel

from models.multi_exit import MultiExitNet, State

OPSET = 18


class StageGraph(BaseModel):
    """One exported stage: its file (relative to the package root) and tensor names."""

    index: int
    file: str
    inputs: list[str]
    outputs: list[str]


def stage_input_names(k: int, n: int) -> list[str]:
    return ["image"] if k == 0 else [f"state_in_{i}" for i in range(n)]


@torch.no_grad()
def export_stages(model: MultiExitNet, input_size: tuple[int, int], out_dir: Path) -> list[StageGraph]:
    """Export every stage of ``model`` (eval mode, no boundary hook) under ``out_dir/onnx``.

    Args:
        input_size: (H, W) of the example image used for tracing.
    Returns:
        One :class:`StageGraph` per stage, file paths relative to ``out_dir``.
    """
    hook, was_training = model.boundary_hook, model.training
    model.set_boundary_hook(None)
    model.eval()
    (out_dir / "onnx").mkdir(parents=True, exist_ok=True)
    graphs: list[StageGraph] = []
    try:
        # Batch 2 so that the tracer cannot specialise the batch axis to 1.
        state: State = (torch.zeros(2, 3, *input_size, dtype=next(model.parameters()).dtype),)
        for k in range(model.num_exits):
            next_state, _ = model.forward_stage(k, state)
            inputs = stage_input_names(k, len(state))
            outputs = [f"state_out_{i}" for i in range(len(next_state))] + ["logits"]
            rel = f"onnx/stage_{k}.onnx"
            dims = tuple({0: torch.export.Dim("batch", min=1)} for _ in state)
            _quiet_export(model.stage(k), state, out_dir / rel, inputs, outputs, dims)
            graphs.append(StageGraph(index=k, file=rel, inputs=inputs, outputs=outputs))
            state = next_state
    finally:
        model.set_boundary_hook(hook)
        model.train(was_training)
    return graphs


def _quiet_export(
    module: torch.nn.Module,
    args: State,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dims: tuple[dict[int, torch.export.Dim], ...],
) -> None:
    # The exporter prints progress and deprecation chatter; keep it out of users' terminals.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=(dims,),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        finally:
            logging.getLogger("torch.onnx").setLevel(level)
