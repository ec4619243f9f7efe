"""The student/teacher recipe's switches: label smoothing, lookahead, the linear schedule with a
warm-up floor, BatchNorm-bias learning rates, reflect padding, TrivialAugment, test-time views,
and exact resume with lookahead on."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import create_model
from training.augment import random_crop_flip, trivial_augment
from training.checkpoint import load_checkpoint
from training.config import ConfigError, OptimConfig, validate_config
from training.lookahead import Lookahead
from training.loop import views_logits
from training.losses import multi_exit_ce, ofa_kd_loss
from training.schedule import lr_factor
from training.stages import make_optimizer
from training.trainer import run_training

from .helpers import tiny_config

TINY_WIDENET = {
    "name": "widenet",
    "kwargs": {"groups": [[8, 1, True], [16, 3, True]], "exit_after": [0, 1]},
}


def test_label_smoothing_by_hand() -> None:
    z = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([0])
    logp = F.log_softmax(z, dim=1)[0]
    eps = 0.3
    # target: 1 - eps + eps/3 on the true class, eps/3 elsewhere
    expected = -((1 - eps + eps / 3) * logp[0] + eps / 3 * (logp[1] + logp[2]))
    torch.testing.assert_close(multi_exit_ce([z, z], y, smoothing=eps), 2 * expected)
    # In OFA KD the CE terms are smoothed, the KL term is not.
    kd = ofa_kd_loss([z, z], y, 1.0, 0.0, smoothing=eps)
    torch.testing.assert_close(kd, 2 * expected)


def test_lookahead_pulls_and_ends_on_the_average() -> None:
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    la = Lookahead(net, total_steps=10, every=5, base=0.5)
    assert la.decay(0) == 0.0 and la.decay(10) == pytest.approx(0.5**5)
    with torch.no_grad():
        net.weight.fill_(1.0)
    for _ in range(5):
        la.after_step()
    # step 5: decay = 0.5**5 * 0.5**3; slow = 0 + (1 - decay) * (1 - 0), and the net takes it
    d = 0.5**5 * 0.125
    assert net.weight.item() == pytest.approx(1 - d)
    with torch.no_grad():
        net.weight.fill_(3.0)
    la.finish()
    assert net.weight.item() == pytest.approx(1 - d)  # finish: the weights become the average


def test_linear_schedule_with_warmup_floor() -> None:
    cfg = OptimConfig(schedule="linear", warmup_epochs=1, warmup_start=0.2)
    f = lr_factor(cfg, epochs=3, steps_per_epoch=10)
    assert f(0) == pytest.approx(0.2 + 0.8 / 10)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(20) == pytest.approx(0.5)
    assert f(30) == pytest.approx(0.0)
    cosine = lr_factor(OptimConfig(warmup_epochs=0), epochs=2, steps_per_epoch=10)
    assert cosine(10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_norm_bias_group_gets_scaled_rate_and_same_decay_per_step(tmp_path: Path) -> None:
    cfg = validate_config(
        tiny_config(
            tmp_path,
            model=TINY_WIDENET,
            optim={"lr": 0.1, "weight_decay": 0.01, "norm_bias_lr_scale": 64},
        )
    )
    model = create_model("widenet", **TINY_WIDENET["kwargs"])
    opt = make_optimizer(cfg, model)
    main, biases = opt.param_groups
    assert biases["lr"] == pytest.approx(6.4) and biases["weight_decay"] == pytest.approx(0.01 / 64)
    assert main["lr"] == pytest.approx(0.1) and main["weight_decay"] == pytest.approx(0.01)
    bn_biases = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in biases["params"]} == bn_biases
    with pytest.raises(ConfigError, match="lr_scaled"):
        validate_config(tiny_config(tmp_path, lr_scaled=True, optim={"norm_bias_lr_scale": 2}))


def test_reflect_padding_repeats_the_border_not_zeros() -> None:
    x = torch.full((64, 1, 4, 4), 200, dtype=torch.uint8)
    out = random_crop_flip(x, 2, torch.Generator().manual_seed(0), pad_mode="reflect")
    assert out.dtype == torch.uint8 and bool((out == 200).all())
    zeros = random_crop_flip(x, 2, torch.Generator().manual_seed(0))
    assert bool((zeros == 0).any())


def test_trivial_augment_is_per_image_and_repeatable() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    a = trivial_augment(x, torch.Generator().manual_seed(5))
    b = trivial_augment(x, torch.Generator().manual_seed(5))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b)
    changed = [(a[i] != x[i]).any().item() for i in range(16)]
    assert 0 < sum(changed) <= 16  # some images changed, each by its own draw
    assert not torch.equal(a, trivial_augment(x, torch.Generator().manual_seed(6)))


def test_test_time_views_average_mirror_and_shifts() -> None:
    class FirstColumn(torch.nn.Module):  # logits = the image's top-left pixel, twice
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            v = x[:, 0, 0, 0:1]
            return [torch.cat([v, -v], 1)]

    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(1, 3, 1, 1)
    plain = views_logits(FirstColumn(), x, "none")
    assert plain[0, 0, 0] == 0.0
    flip = views_logits(FirstColumn(), x, "flip")
    assert flip[0, 0, 0] == pytest.approx((0 + 3) / 2)
    full = views_logits(FirstColumn(), x, "flip-translate")
    # reflect-padded shift up-left puts x[1, 1] (5) at the corner, its mirror x[1, 2] (6); the
    # down-right shift x[1, 1] (5) and mirror x[1, 2] (6) -> 0.5 * 1.5 + 0.25 * (5.5 + 5.5)
    assert full[0, 0, 0] == pytest.approx(0.5 * 1.5 + 0.25 * (5.5 + 5.5))


def test_widenet_run_with_lookahead_resumes_exactly(tmp_path: Path) -> None:
    extra = {
        "epochs": 3, "lookahead": True, "label_smoothing": 0.2, "model": TINY_WIDENET,
        "data": {"crop_padding": 2, "pad_mode": "reflect", "policy": "trivialaugment"},
        "optim": {"schedule": "linear", "warmup_start": 0.2, "warmup_epochs": 1,
                  "norm_bias_lr_scale": 4},
    }  # fmt: skip
    whole = validate_config(tiny_config(tmp_path / "whole", **extra))
    assert run_training(whole)["complete"]
    part = validate_config(tiny_config(tmp_path / "part", stop_after=2, **extra))
    assert not run_training(part)["complete"]
    assert "lookahead" in load_checkpoint(tmp_path / "part" / "last.pt")
    assert run_training(validate_config(tiny_config(tmp_path / "part", **extra)), resume=True)[
        "complete"
    ]
    a = load_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the whitening stem was set from the data, not left at its initialisation
    assert a["stem.0.weight"].abs().sum() > 0
