"""OFA KD and the multi-exit CE against hand computation."""

from __future__ import annotations

import math

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
