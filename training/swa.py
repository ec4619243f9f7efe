"""Stochastic weight averaging (SWA; Izmailov et al., "Averaging Weights Leads to Wider Optima and
Better Generalization", UAI 2018), as an optional end phase of a joint run.

From epoch ``swa_start`` on, the weights are averaged at each epoch's end (an equal-weight running
mean, ``torch.optim.swa_utils.AveragedModel``). The averaged weights never ran through the
network during training, so their BatchNorm statistics are recomputed at the end with one pass
over the (augmented) training split (``update_bn``: a cumulative average, not a momentum one).
The run's final model is the average; the last iterate is kept beside it in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, update_bn

from models.multi_exit import MultiExitNet
from training.loop import autocast_context


def averaged(model: MultiExitNet) -> AveragedModel:
    """An equal-weight running mean of ``model``'s parameters (a deep copy: ``.module``)."""
    return AveragedModel(model)


def recompute_batchnorm(
    swa: AveragedModel,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device,
    amp: str = "none",
) -> MultiExitNet:
    """Reset and re-estimate every BatchNorm's running statistics of ``swa.module`` from ``batches``
    (images ``[B,3,H,W]``, already augmented and normalised); returns that module, in eval mode."""

    with torch.no_grad(), autocast_context(device, amp):
        update_bn(batches, swa.module, device=device)  # feeds each batch's first element
    model = swa.module
    assert isinstance(model, MultiExitNet)
    return model.eval()
