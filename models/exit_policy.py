"""The early-exit rule of calibration (training): the rule the service must exit by.

A sample leaves at the first exit ``k`` whose confidence (max softmax probability) reaches
``thresholds[k]``; the last exit takes everything left. A threshold above 1 disables an exit
(a softmax probability never exceeds 1), which is how budget 1.0 sends every sample to the end.
The service applies the same rule one exit at a time (``service.policy.leaving_now``, tested
against :func:`first_exit`).
"""

from __future__ import annotations

import torch
from torch import Tensor

NEVER_EXIT = 2.0
"""A threshold no confidence reaches."""


def confidences(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``logits [N, C]`` -> ``(confidence [N], predicted class [N])`` from the softmax."""
    probs = torch.softmax(logits.float(), dim=-1)
    conf, pred = probs.max(dim=-1)
    return conf, pred


def first_exit(all_conf: Tensor, thresholds: Tensor) -> Tensor:
    """Exit index each sample takes, from the confidences of every exit.

    Args:
        all_conf: ``[K, N]`` confidences of the K exits.
        thresholds: ``[K]`` thresholds (the last is ignored).
    Returns:
        ``[N]`` int64 exit indices in ``0..K-1``.
    """
    k = all_conf.shape[0]
    hit = all_conf >= thresholds.view(k, 1).to(all_conf.dtype)
    hit[-1] = True
    # argmax over a bool->int tensor returns the first True along the exits.
    return hit.to(torch.int8).argmax(dim=0)
