"""Stage runs at bucketed batch sizes: padded static buffers, captured as CUDA graphs on CUDA.

For a model this small a stage's GPU time is kernel launches, not arithmetic, so each stage is
captured once per bucket (batch sizes ``buckets``, powers of two) as a CUDA graph and replayed:
one launch instead of one per layer. A graph has fixed shapes, so a batch of ``n`` images is
copied into the first ``n`` rows of the bucket's static input (the rest is padding: stale rows
of earlier batches, every layer works per image, so they never touch a real row's answer) and
the first ``n`` rows of the outputs are copied out before the next replay can overwrite them.

Without CUDA (or when a capture fails, which is logged) the same static buffers run eagerly:
that path is what the CPU tests check the padding against.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch
from torch import Tensor

from models.multi_exit import State
from service.engine.inference import inference_mode

log = logging.getLogger("service.engine")

StageFn = Callable[[int, State], tuple[State, Tensor]]


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """Powers of two from 1 up to ``max_batch`` (``max_batch`` itself last): a batch pads by less
    than 2x, and a few buckets keep capture time and graph memory small."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return (*sizes, max_batch)


class PaddedStages:
    """``run(k, state)`` at the smallest bucket that holds the batch (see the module docstring).

    Args:
        fn: the eager stage function ``(k, state) -> (next state, logits)``.
        num_stages: K.
        input_shape: one image's shape ``(3, H, W)``.
        buckets: the batch sizes, ascending.
        capture: capture CUDA graphs (needs ``device == "cuda"``); else run eagerly.
    """

    def __init__(
        self,
        fn: StageFn,
        num_stages: int,
        input_shape: tuple[int, ...],
        buckets: tuple[int, ...],
        device: str,
        dtype: torch.dtype = torch.float32,
        capture: bool = False,
    ) -> None:
        self.fn, self.buckets = fn, buckets
        self._inputs: dict[tuple[int, int], State] = {}
        self._outputs: dict[tuple[int, int], tuple[State, Tensor]] = {}
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._lock = threading.Lock()  # one replay at a time: replays share the static buffers
        with torch.inference_mode():
            for b in buckets:
                state: State = (torch.zeros(b, *input_shape, device=device, dtype=dtype),)
                for k in range(num_stages):
                    self._inputs[k, b] = tuple(t.clone() for t in state)
                    state, _ = fn(k, state)
        self.captured = False
        if capture:
            try:
                self._capture(num_stages)
                self.captured = True
            except Exception:  # a failed capture leaves the eager path, which always works
                log.exception("CUDA graph capture failed; stages run eagerly at padded sizes")
                self._graphs.clear()

    def _capture(self, num_stages: int) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side):
            for key, inputs in self._inputs.items():
                for _ in range(2):  # warm-up outside the capture (cuDNN picks its kernels)
                    self.fn(key[0], inputs)
        torch.cuda.current_stream().wait_stream(side)
        with torch.inference_mode():
            for key, inputs in self._inputs.items():
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._outputs[key] = self.fn(key[0], inputs)
                self._graphs[key] = graph
        torch.cuda.synchronize()
        log.info("captured %d CUDA graphs (%d stages x buckets %s)", len(self._graphs), num_stages,
                 self.buckets)  # fmt: skip

    def bucket(self, n: int) -> int | None:
        """The smallest bucket holding ``n`` images (None: larger than every bucket)."""
        for b in self.buckets:
            if b >= n:
                return b
        return None

    def run(self, k: int, state: State) -> tuple[State, Tensor]:
        n = state[0].shape[0]
        b = self.bucket(n)
        if b is None:
            return self.fn(k, state)
        inputs = self._inputs[k, b]
        with self._lock, inference_mode():
            for static, t in zip(inputs, state, strict=True):
                static[:n].copy_(t, non_blocking=True)
            graph = self._graphs.get((k, b))
            if graph is None:
                out, logits = self.fn(k, inputs)
                return tuple(t[:n] for t in out), logits[:n]
            graph.replay()
            out, logits = self._outputs[k, b]
            # Copies: the next replay of this graph overwrites its static outputs.
            return tuple(t[:n].clone() for t in out), logits[:n].clone()
