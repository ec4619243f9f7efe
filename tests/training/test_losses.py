"""OFA KD and the multi-exit CE against hand computation."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from training.losses import kd_kl, multi_exit_ce, ofa_kd_loss


def test_kd_value_and_gradient_by_hand() -> None:
    # Two classes, T = 2: teacher logits (ln 3, 0) -> softened probabilities (r, 1 - r) with
    # r = sqrt(3) / (sqrt(3) + 1); the student (0, 0) -> (1/2, 1/2).
    t = 2.0
    r = math.sqrt(3) / (math.sqrt(3) + 1)
    kl = r * math.log(r / 0.5) + (1 - r) * math.log((1 - r) / 0.5)
    student = torch.zeros(1, 2, requires_grad=True)
    teacher = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    loss = kd_kl(student, teacher, t)
    assert abs(loss.item() - t * t * kl) < 1e-6  # T^2 * KL, 'batchmean' with N = 1
    loss.backward()
    # d/dz [T^2 KL(p_t || softmax(z/T))] = T (softmax(z/T) - p_t)
    expected = torch.tensor([[t * (0.5 - r), t * (0.5 - (1 - r))]])
    assert torch.allclose(student.grad, expected, atol=1e-6)
    assert teacher.grad is None  # the teacher is detached


def test_kd_batchmean_averages_over_samples() -> None:
    s = torch.randn(4, 5)
    te = torch.randn(4, 5)
    per_sample = torch.stack([kd_kl(s[i : i + 1], te[i : i + 1], 3.0) for i in range(4)])
    assert torch.allclose(kd_kl(s, te, 3.0), per_sample.mean(), atol=1e-6)


def test_ofa_kd_loss_combines_terms() -> None:
    torch.manual_seed(0)
    logits = [torch.randn(3, 4, requires_grad=True) for _ in range(3)]
    y = torch.tensor([0, 1, 3])
    g, t = 0.3, 2.0
    loss = ofa_kd_loss(logits, y, t, g)
    expected = F.cross_entropy(logits[2], y)
    for z in logits[:2]:
        expected = expected + (1 - g) * F.cross_entropy(z, y) + g * kd_kl(z, logits[2], t)
    assert torch.allclose(loss, expected)
    loss.backward()
    # The last exit gets gradient from its CE only: the KD teacher is detached.
    (ce_grad,) = torch.autograd.grad(F.cross_entropy(logits[2], y), logits[2])
    assert torch.allclose(logits[2].grad, ce_grad, atol=1e-6)


def test_ofa_kd_with_external_teacher_and_ce_sum() -> None:
    logits = [torch.randn(2, 3) for _ in range(2)]
    y = torch.tensor([1, 2])
    teacher = torch.randn(2, 3)
    with_teacher = ofa_kd_loss(logits, y, 1.0, 1.0, teacher=teacher)
    assert torch.allclose(with_teacher, F.cross_entropy(logits[1], y) + kd_kl(logits[0], teacher, 1.0))
    assert torch.allclose(multi_exit_ce(logits, y), sum(F.cross_entropy(z, y) for z in logits))


def test_external_teacher_teaches_the_last_exit_too() -> None:
    torch.manual_seed(1)
    logits = [torch.randn(3, 4, requires_grad=True) for _ in range(2)]
    y = torch.tensor([2, 0, 1])
    teacher = torch.randn(3, 4)
    g, t = 0.25, 3.0
    loss = ofa_kd_loss(logits, y, t, g, teacher=teacher, teach_last=True)
    expected = sum((1 - g) * F.cross_entropy(z, y) + g * kd_kl(z, teacher, t) for z in logits)
    assert torch.allclose(loss, expected)
    # Without teach_last the last exit keeps plain CE: the two differ by exactly its KD mix.
    plain_last = ofa_kd_loss(logits, y, t, g, teacher=teacher)
    last = logits[-1]
    assert torch.allclose(
        loss - plain_last, g * (kd_kl(last, teacher, t) - F.cross_entropy(last, y)), atol=1e-6
    )


def test_teach_last_without_a_teacher_is_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="external teacher"):
        ofa_kd_loss([torch.randn(1, 2)], torch.tensor([0]), 1.0, 0.5, teach_last=True)


def test_official_kd_form_by_hand() -> None:
    # kalviny/IMTA utils.py: CE at the last exit; (1 - g) CE + g T^2 KLDivLoss() at the others,
    # KLDivLoss's default reduction being the mean over batch *and* classes. Two classes, T = 3,
    # g = 0.9, two samples of class 0. Last exit (= teacher) (3 ln 3, 0): softened (3/4, 1/4),
    # CE ln(28/27); exit 0 (0, 0): softened (1/2, 1/2), CE ln 2, KL = 3/4 ln 3 - ln 2 per sample.
    t, g = 3.0, 0.9
    last = torch.tensor([[3 * math.log(3.0), 0.0]] * 2)
    first = torch.zeros(2, 2)
    y = torch.tensor([0, 0])
    kl = 0.75 * math.log(3.0) - math.log(2.0)
    official = math.log(28 / 27) + (1 - g) * math.log(2.0) + g * t * t * kl / 2  # mean over 2 classes
    got = ofa_kd_loss([first, last], y, t, g, form="official")
    assert abs(got.item() - official) < 1e-6
    batchmean = math.log(28 / 27) + (1 - g) * math.log(2.0) + g * t * t * kl
    assert abs(ofa_kd_loss([first, last], y, t, g).item() - batchmean) < 1e-6
    # The official form is PyTorch's nn.KLDivLoss() on probabilities, as the official code calls it.
    with warnings.catch_warnings():  # its "mean" reduction is deprecated in favour of batchmean
        warnings.simplefilter("ignore")
        ref = torch.nn.KLDivLoss()(F.log_softmax(first / t, dim=1), F.softmax(last / t, dim=1))
    assert abs(kd_kl(first, last, t, "official").item() - t * t * ref.item()) < 1e-6
