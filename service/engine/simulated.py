"""A simulated device: measure how topologies feed one accelerator on a machine without one.

Not for production. A stage run costs ``launch + per_image * n`` seconds of sleep (the
interpreter lock is released while it sleeps, as it is while a GPU runs), on one device every
process shares: runs are serialised by an exclusive ``flock`` on one file, as one GPU is
shared by every process that launches work on it. The default costs come from the GPU figures
in the docs (docs/engine.md, "Simulated device").

Its answers are the real model's: the first time an image is seen, the package's network runs
on it on the CPU (every exit at once, outside the simulated time) and its logits are memoised
under a digest of the image's bytes; the state carried between stages is each image's row in
that table. So exits, and with them the shrinking batches of early exit, follow real traffic.

The lock file also holds the device's busy seconds (a float64 at offset 0, updated under the
lock), so a benchmark can read how busy the device was over a window.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

from models.multi_exit import MultiExitNet, State
from service.engine.inference import inference_mode

_BUSY = struct.Struct("<d")


class SimulatedDevice:
    """One device shared by processes: ``run(seconds)`` holds it exclusively while it sleeps."""

    def __init__(self, lock_file: Path) -> None:
        self.path = lock_file
        self._fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        self._local = threading.Lock()  # flock is per open file: threads queue here first

    def run(self, seconds: float) -> None:
        """Occupy the device for ``seconds`` (waiting for it first while another process runs)."""
        with self._local:
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # releases the GIL while it waits
            try:
                time.sleep(seconds)
                raw = os.pread(self._fd, _BUSY.size, 0)
                busy = _BUSY.unpack(raw)[0] if len(raw) == _BUSY.size else 0.0
                os.pwrite(self._fd, _BUSY.pack(busy + seconds), 0)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


def busy_seconds(lock_file: Path) -> float:
    """Seconds the device at ``lock_file`` has been occupied since the file was created."""
    with lock_file.open("rb") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        raw = f.read(_BUSY.size)
    return _BUSY.unpack(raw)[0] if len(raw) == _BUSY.size else 0.0


class SimulatedBackend:
    """A ``StageBackend`` whose stages sleep on a :class:`SimulatedDevice` and answer with the
    real ``model``'s memoised logits (module docstring).

    Args:
        launch_s: fixed seconds of one stage run (kernel launches, synchronisation).
        per_image_s: seconds each image adds to a stage run.
    """

    name = "simulated"
    device = "cpu"  # where the tensors live: the runner brings nothing back from a device

    def __init__(
        self, model: MultiExitNet, device: SimulatedDevice, launch_s: float, per_image_s: float
    ) -> None:
        self.model, self.sim = model, device
        self.launch_s, self.per_image_s = launch_s, per_image_s
        self._rows: dict[bytes, int] = {}
        self._table = torch.empty(0)  # [M, K, C] logits of every image seen, per exit
        self._lock = threading.Lock()

    def cost(self, n: int) -> float:
        """Seconds of one stage run on ``n`` images."""
        return self.launch_s + self.per_image_s * n

    def run_stage(self, k: int, state: State) -> tuple[State, Tensor]:
        """Stage 0: ``(image [N, 3, H, W],)``; later stages: ``(row [N] int64,)``; both give
        ``((row [N],), logits [N, C])``."""
        rows = self._rows_of(state[0]) if k == 0 else state[0]
        logits = self._table[rows, k]
        self.sim.run(self.cost(len(rows)))
        return (rows,), logits

    def _rows_of(self, images: Tensor) -> Tensor:
        """``[N]`` table rows of ``images``; the network runs once on the images not seen yet."""
        keys = [hashlib.blake2b(x.numpy().tobytes(), digest_size=16).digest() for x in images]
        with self._lock:
            first = {key: i for i, key in reversed(list(enumerate(keys))) if key not in self._rows}
            if first:
                with inference_mode():
                    exits = self.model(images[list(first.values())].float())  # K x [m, C]
                logits = torch.stack(exits, dim=1)  # [m, K, C]
                for key in first:
                    self._rows[key] = len(self._rows)
                old = self._table if len(self._rows) > len(first) else logits[:0]
                self._table = torch.cat([old, logits])
            return torch.tensor([self._rows[key] for key in keys], dtype=torch.int64)
