"""Backends run one stage of a package on a batch: PyTorch (eager) and ONNX Runtime.

Both take and return torch tensors with the batch on dim 0, so the engine does not care which
one runs. ONNX Runtime runs the package's per-stage graphs (``manifest.onnx``): it cannot stop a
single graph part-way, which is why the package exports one graph per stage.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from models.multi_exit import MultiExitNet, State
from models.package import ModelPackage
from service.engine.graphs import PaddedStages
from service.engine.inference import inference_mode

log = logging.getLogger("service.engine")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class BackendError(RuntimeError):
    """A backend cannot be built for this package or device."""


class StageBackend(Protocol):
    """What the engine needs from a backend."""

    name: str
    device: str

    def run_stage(self, k: int, state: State) -> tuple[State, Tensor]:
        """Stage ``k`` on ``state`` (stage 0: ``(image [N,3,H,W],)``) -> (next state, logits [N,C])."""
        ...


def cuda_works() -> bool:
    """True only when a CUDA device really runs a kernel (not merely when libraries are present)."""
    if not torch.cuda.is_available():
        return False
    try:
        (torch.ones(1, device="cuda") + 1).item()
        return True
    except Exception:  # a broken driver raises assorted errors
        return False


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when CUDA really works, else ``cpu``; ``cuda`` without CUDA is an error."""
    if device == "auto":
        return "cuda" if cuda_works() else "cpu"
    if device == "cuda" and not cuda_works():
        raise BackendError("device 'cuda' was requested but CUDA does not work on this machine")
    return device


class TorchBackend:
    """Eager PyTorch over ``MultiExitNet.forward_stage``; fp16 only on CUDA, bf16 on any device.

    With ``buckets``, stages run at padded bucket sizes (``graphs.PaddedStages``), captured as
    CUDA graphs when ``device`` is ``cuda``; batches above the largest bucket run eagerly.
    """

    name = "torch"

    def __init__(
        self,
        model: MultiExitNet,
        device: str,
        dtype: str = "float32",
        buckets: tuple[int, ...] = (),
        input_size: tuple[int, int] = (32, 32),
    ) -> None:
        self.device = device
        self.dtype = _DTYPES[dtype] if device == "cuda" or dtype == "bfloat16" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.padded: PaddedStages | None = None
        if buckets:
            self.padded = PaddedStages(
                self._eager,
                self.model.num_exits,
                (3, *input_size),
                buckets,
                device,
                self.dtype,
                capture=device == "cuda",
            )

    def _eager(self, k: int, state: State) -> tuple[State, Tensor]:
        return self.model.forward_stage(k, state)

    def run_stage(self, k: int, state: State) -> tuple[State, Tensor]:
        with inference_mode():
            if k == 0:
                state = (state[0].to(self.device, self.dtype, non_blocking=True),)
            run = self._eager if self.padded is None else self.padded.run
            next_state, logits = run(k, state)
            return next_state, logits.float()


_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}


class OnnxBackend:
    """ONNX Runtime over the package's stage graphs; CUDA provider only when it really works.

    Stages run with IO binding: inputs are bound to the torch tensors' own memory and outputs to
    torch tensors allocated on the backend's device, so the state stays where it is between
    stages (no NumPy round trip, no copy through host memory on CUDA).
    """

    name = "onnxruntime"

    def __init__(
        self, onnx_paths: list[Path], device: str, input_names: list[list[str]], threads: int = 0
    ) -> None:
        import onnxruntime as ort  # heavy; imported only when this backend is used

        if not onnx_paths:
            raise BackendError("the package has no ONNX stage graphs (exported without ONNX)")
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            # A fixed small pool that sleeps when idle: spinning threads starve the event loop
            # and the decoding threads on a small CPU (measured, docs/serving-performance.md).
            opts.intra_op_num_threads = threads
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = [
            ort.InferenceSession(str(p), sess_options=opts, providers=providers) for p in onnx_paths
        ]
        used = self.sessions[0].get_providers()[0]
        # ORT silently falls back to CPU when the CUDA libraries do not load: report what it uses.
        self.device = "cuda" if used == "CUDAExecutionProvider" else "cpu"
        self.input_names = input_names
        # Every output is [batch, *fixed]: its torch buffer is allocated per call from these.
        self.outputs = [
            [(o.name, _ORT_TYPES[o.type], tuple(o.shape[1:])) for o in s.get_outputs()]
            for s in self.sessions
        ]
        log.info("onnxruntime backend: provider %s (device %s)", used, self.device)

    def run_stage(self, k: int, state: State) -> tuple[State, Tensor]:
        session, device = self.sessions[k], self.device
        inputs = [t.to(device).contiguous() for t in state]  # kept alive until the run ends
        n = inputs[0].shape[0]
        outs = [torch.empty((n, *shape), dtype=dt, device=device) for _, dt, shape in self.outputs[k]]
        if device == "cuda":
            torch.cuda.current_stream().synchronize()  # ORT runs on its own stream
        binding = session.io_binding()
        for name, t in zip(self.input_names[k], inputs, strict=True):
            binding.bind_input(name, device, 0, _NP_TYPES[t.dtype], list(t.shape), t.data_ptr())
        for (name, _, _), t in zip(self.outputs[k], outs, strict=True):
            binding.bind_output(name, device, 0, _NP_TYPES[t.dtype], list(t.shape), t.data_ptr())
        session.run_with_iobinding(binding)
        if device == "cuda":
            binding.synchronize_outputs()
        return tuple(outs[:-1]), outs[-1].float()


_NP_TYPES = {torch.float32: np.float32, torch.float16: np.float16}


def build_backend(
    pkg: ModelPackage,
    backend: str,
    device: str,
    torch_dtype: str = "float32",
    threads: int = 0,
    buckets: tuple[int, ...] = (),
) -> StageBackend:
    """The backend the settings ask for; ``auto`` measures both and keeps the faster.

    Args:
        backend: ``torch`` | ``onnxruntime`` | ``auto``.
        device: an already resolved device (``cpu`` or ``cuda``).
        threads: intra-op threads of onnxruntime (0 = its default); torch's are set globally.
        buckets: padded batch sizes of the torch backend (CUDA graphs on CUDA); () = none.
    """
    size = pkg.manifest.preprocessing.input_size
    if backend == "torch":
        return TorchBackend(pkg.model, device, torch_dtype, buckets, size)
    inputs = [g.inputs for g in pkg.manifest.onnx]
    if backend == "onnxruntime":
        return OnnxBackend(pkg.onnx_paths, device, inputs, threads)
    candidates: list[StageBackend] = [TorchBackend(pkg.model, device, torch_dtype, buckets, size)]
    if pkg.onnx_paths:
        candidates.append(OnnxBackend(pkg.onnx_paths, device, inputs, threads))
    if len(candidates) == 1:
        log.info("backend auto -> torch (the package has no ONNX graphs)")
        return candidates[0]
    h, w = pkg.manifest.preprocessing.input_size
    timings = {b.name: time_full_pass(b, pkg.manifest.num_exits, (8, 3, h, w)) for b in candidates}
    best = min(candidates, key=lambda b: timings[b.name])
    log.info(
        "backend auto -> %s (full pass, batch 8: %s)",
        best.name,
        ", ".join(f"{n} {t * 1e3:.2f} ms" for n, t in timings.items()),
    )
    return best


def time_full_pass(
    backend: StageBackend, num_exits: int, shape: tuple[int, ...], repeats: int = 5
) -> float:
    """Median seconds of one pass through every stage on a random batch of ``shape``."""
    x = torch.randn(*shape)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        state: State = (x,)
        for k in range(num_exits):
            state, logits = backend.run_stage(k, state)
        logits.cpu()
        if i > 0:  # the first pass includes lazy initialisation
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]
