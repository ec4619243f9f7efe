"""The device side of a stage run: run it, bring the answers' probabilities home, gather.

Whatever the backend's device, each stage costs exactly one small device-to-host transfer: the
softmax of the exit ``[n, C]`` (C floats per image), copied without blocking into pinned host
memory and waited for on an event. The exit decision is then made on the host from those
probabilities (they are also the answers), and the survivors' state is gathered on the device
with one index per state tensor; the state itself never leaves the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.multi_exit import State
from service.engine.backends import StageBackend
from service.engine.inference import inference_mode


class StageRunner:
    """Runs stages of ``backend`` and moves only the exit's probabilities to the host."""

    def __init__(self, backend: StageBackend) -> None:
        self.backend = backend
        self.cuda = backend.device == "cuda"

    def step(self, k: int, state: State) -> tuple[State, np.ndarray]:
        """Stage ``k`` -> (next state on the device, ``probs [n, C]`` float32 on the host)."""
        with inference_mode():
            next_state, logits = self.backend.run_stage(k, state)
            probs = torch.softmax(logits.float(), dim=-1)
            if not self.cuda or not probs.is_cuda:
                return next_state, probs.numpy()
            # Pinned memory (the caching host allocator recycles it) lets the copy run
            # asynchronously; the event waits for this copy only, not for the whole device.
            host = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True)
            host.copy_(probs, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            done.synchronize()
            return next_state, host.numpy()

    def gather(self, state: State, idx: np.ndarray) -> State:
        """The state rows at positions ``idx [m]`` (one index_select per tensor, on the device)."""
        index = torch.from_numpy(idx)
        if state and state[0].is_cuda:
            index = index.pin_memory().to(state[0].device, non_blocking=True)
        with inference_mode():
            return tuple(t.index_select(0, index) for t in state)

    @staticmethod
    def join(states: Sequence[State]) -> State:
        """Concatenate the states of several batches along the batch dim."""
        if len(states) == 1:
            return states[0]
        with inference_mode():
            return tuple(torch.cat(ts) for ts in zip(*states, strict=True))
