"""``inference_mode()``: torch's inference mode, entered once per thread rather than per call.

The engine's workers enter it once for their lifetime; the stage runner, the backends and the
padded stages then find it on and skip it. Entering it again costs ~1 us a call, and a stage run
entered it three times (measured with ``python -m benchmarks.engine_speed --backend stub``).
"""

from __future__ import annotations

import contextlib

import torch

_ALREADY = contextlib.nullcontext()


def inference_mode() -> contextlib.AbstractContextManager[object]:
    """``torch.inference_mode()``, or a no-op when this thread is already in it."""
    return _ALREADY if torch.is_inference_mode_enabled() else torch.inference_mode()
