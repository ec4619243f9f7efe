"""Multi-exit losses (pure functions over a list of exit logits, shallow -> deep).

OFA KD (IMTA section 3.3): the deepest exit teaches every earlier one,

    L = CE(z_K, y) + sum_{k<K} [ (1 - g) CE(z_k, y) + g T^2 KL(softmax(t / T) || softmax(z_k / T)) ]

with the teacher logits ``t`` detached. Two forms differ only in how KL is reduced:

- ``batchmean`` (sum over classes, mean over the batch): the mathematically standard per-sample
  KL, whose gradient has the same scale as the CE term's, so that ``g`` is an honest mixing weight.
- ``official``: the official code's ``nn.KLDivLoss()`` (kalviny/IMTA ``utils.py``), whose default
  reduction is the mean over batch *and* classes, i.e. the per-sample KL divided by C. Its
  defaults are g = 0.9, T = 3 (``args.py``): on 10 classes, CE_K + 0.1 sum CE_k + 0.081 sum KL_k
  in batchmean units.

With an external teacher (``kd_teacher``: a trained network's last exit; "born-again" distillation,
Furlanello et al., ICML 2018) the deepest exit is a student too and gets the same mix of CE and KD.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

KDForm = Literal["batchmean", "official"]


def multi_exit_ce(all_logits: list[Tensor], target: Tensor, smoothing: float = 0.0) -> Tensor:
    """Sum over exits of the batch-mean cross-entropy (the plain MSDNet loss).

    Args:
        all_logits: K tensors ``[N, C]``.
        target: ``[N]`` class indices.
        smoothing: label smoothing (Szegedy et al. 2016): the target puts ``smoothing`` of its
            mass uniformly on all classes.
    Returns:
        scalar.
    """
    return torch.stack([ce(z, target, smoothing) for z in all_logits]).sum()


def ce(logits: Tensor, target: Tensor, smoothing: float = 0.0) -> Tensor:
    """Batch-mean cross-entropy of ``[N, C]`` logits (in float32) with label ``smoothing``."""
    return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)


def kd_kl(student: Tensor, teacher: Tensor, temperature: float, form: KDForm = "batchmean") -> Tensor:
    """``T^2 KL(softmax(teacher/T) || softmax(student/T))``; teacher is detached.

    ``form`` "batchmean" averages the per-sample KL over the batch; "official" also divides by the
    number of classes (PyTorch's default elementwise mean). The ``T^2`` keeps the gradient
    magnitude independent of T (Hinton et al., 2015).
    """
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher.detach().float() / t, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    if form == "official":  # PyTorch's "mean" (sum / (N C)), written out: "mean" is deprecated
        kl = kl / student.shape[-1]
    return kl * t * t


def ofa_kd_loss(
    all_logits: list[Tensor],
    target: Tensor,
    temperature: float,
    weight: float,
    teacher: Tensor | None = None,
    teach_last: bool = False,
    form: KDForm = "batchmean",
    smoothing: float = 0.0,
) -> Tensor:
    """One-for-all KD loss (module docstring).

    Args:
        all_logits: K tensors ``[N, C]``, shallow first.
        target: ``[N]``.
        temperature: T.
        weight: g in [0, 1].
        teacher: ``[N, C]`` teacher logits; defaults to the last exit's own logits (joint recipe).
            The two-stage recipe passes the frozen network's last exit.
        teach_last: the deepest exit learns from ``teacher`` too (an external teacher); otherwise
            it gets plain CE.
        form: the KL reduction (module docstring).
        smoothing: label smoothing of the CE terms.
    Returns:
        scalar.
    """
    last = all_logits[-1]
    if teach_last and teacher is None:
        raise ValueError("teach_last needs an external teacher: the last exit cannot teach itself")
    t = last if teacher is None else teacher
    students = all_logits if teach_last else all_logits[:-1]
    loss = torch.zeros((), device=last.device) if teach_last else ce(last, target, smoothing)
    for z in students:
        loss = loss + (1 - weight) * ce(z, target, smoothing)
        loss = loss + weight * kd_kl(z, t, temperature, form)
    return loss
