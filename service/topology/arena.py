"""Where a front end puts preprocessed images for the engine process: one shared-memory block.

Each front-end process owns one ``multiprocessing.shared_memory`` block cut into equal cells,
one image each. A request's ``[N, 3, H, W]`` batch is written into N contiguous free cells and
only ``(first cell, N)`` travels to the engine process, which copies the images out of the block
(no pickling of image data; a memcpy of the request's floats). The cells are free again once
the engine's one final message about the request (answer, error or cancellation) has come back.
"""

from __future__ import annotations

import threading
from multiprocessing import shared_memory

import numpy as np
import torch
from torch import Tensor


class ArenaFullError(RuntimeError):
    """No run of free cells is long enough for the request (the engine is far behind)."""


class Arena:
    """The front end's side: allocate cells, write a batch into them, free them.

    Args:
        cells: how many images the block holds at once.
        cell_floats: float32 values per image (``3 * H * W`` of the largest model served).
    """

    def __init__(self, cells: int, cell_floats: int) -> None:
        self.cells, self.cell_floats = cells, cell_floats
        self.shm = shared_memory.SharedMemory(create=True, size=cells * cell_floats * 4)
        self.view = torch.frombuffer(self.shm.buf, dtype=torch.float32).view(cells, cell_floats)
        self._free = np.ones(cells, dtype=np.bool_)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.shm.name

    def put(self, images: Tensor) -> int:
        """Copy ``images [N, ...]`` (float32, ``cell_floats`` values each) into N free cells;
        returns the first cell.

        Raises:
            ArenaFullError: no N contiguous cells are free.
        """
        n = images.shape[0]
        with self._lock:
            if n > self.cells:
                raise ArenaFullError(f"{n} images do not fit in {self.cells} cells")
            if n == 1:
                first = int(np.argmax(self._free))
                ok = bool(self._free[first])
            else:
                starts = np.flatnonzero(
                    np.lib.stride_tricks.sliding_window_view(self._free, n).all(axis=1)
                )  # cells where a run of n free ones starts
                first = int(starts[0]) if len(starts) else 0
                ok = len(starts) > 0
            if not ok:
                raise ArenaFullError(f"no {n} free cells of {self.cells}")
            self._free[first : first + n] = False
        self.view[first : first + n].copy_(images.reshape(n, -1))
        return first

    def free(self, first: int, n: int) -> None:
        with self._lock:
            self._free[first : first + n] = True

    def in_use(self) -> int:
        with self._lock:
            return int((~self._free).sum())

    def close(self) -> None:
        """Unmap and remove the block (the engine process keeps its own mapping until it lets go)."""
        del self.view
        self.shm.close()
        self.shm.unlink()


class ArenaReader:
    """The engine process's side of one front end's block: images out of cells, copied."""

    def __init__(self, name: str, cell_floats: int) -> None:
        # Attaching registers the block with Python's resource tracker, which would unlink it
        # when its tracker exits (CPython gh-82300). Here that tracker is the server parent's,
        # shared by every process it spawned (engine and front ends alike): the block is
        # registered once, unlinked by its front end, or by the tracker at the server's exit
        # if a front end died without doing so.
        self.shm = shared_memory.SharedMemory(name=name)
        self.view = torch.frombuffer(self.shm.buf, dtype=torch.float32).view(-1, cell_floats)

    def get(self, first: int, n: int, shape: tuple[int, ...]) -> Tensor:
        """``[n, *shape]`` images from cells ``first..first+n``, copied out of the block so that
        the engine never reads a cell the front end has reused (a cancelled request's, say)."""
        size = int(np.prod(shape))
        return self.view[first : first + n, :size].clone().view(n, *shape)

    def close(self) -> None:
        del self.view
        self.shm.close()
