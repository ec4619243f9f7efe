"""``python -m training compare``: McNemar's exact test, the paired counts, and the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.cli import EXIT_ARTIFACT, EXIT_CONFIG, main
from training.compare import compare_exits, mcnemar_exact_p
from training.config import validate_config
from training.trainer import run_training

from .helpers import tiny_config


@pytest.mark.parametrize(
    ("only_a", "only_b", "p"),
    [
        (0, 0, 1.0),  # no discordant image: no evidence either way
        (1, 9, 2 * (1 + 10) / 2**10),  # n = 10: 2 * (C(10,0) + C(10,1)) / 2^10
        (6, 0, 2 / 2**6),  # all six discordant images favour A
        (5, 5, 1.0),  # 2 * P(X <= 5) > 1 for Binomial(10, 1/2): capped
        (64, 67, None),  # a recorded tie at the last exit (docs/journal.md): p = 0.86
    ],
)
def test_mcnemar_exact_p_by_hand(only_a: int, only_b: int, p: float | None) -> None:
    got = mcnemar_exact_p(only_a, only_b)
    if p is None:
        assert round(got, 2) == 0.86
    else:
        assert got == pytest.approx(p, rel=1e-12)
    assert mcnemar_exact_p(only_b, only_a) == got  # symmetric


def test_mcnemar_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="negative"):
        mcnemar_exact_p(-1, 3)


def test_compare_exits_counts_the_discordant_images_and_the_ensemble() -> None:
    # 4 images, 2 classes, 1 exit. Labels 0, 0, 1, 1.
    labels = torch.tensor([0, 0, 1, 1])
    a = torch.tensor([[[3.0, 0.0], [0.0, 0.2], [0.0, 1.0], [1.0, 0.0]]])  # right: 0, 2
    b = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])  # right: 1, 2, 3
    (row,) = compare_exits(a, b, labels)
    assert (row.accuracy_a, row.accuracy_b) == (0.5, 0.75)
    assert (row.only_a, row.only_b) == (1, 2)  # image 0 for A; images 1 and 3 for B
    assert row.p_value == 1.0
    # Mean softmax: image 0 is A's confident 0 (p=0.95) against B's 0.27 -> class 0; image 1 is
    # A's weak 1 (0.55) against B's 0.73 for 0 -> class 0; image 3 is a 0.73/0.27 split both ways
    # -> a tie at 0.5 that argmax resolves to class 0, wrong. Right: 0, 1, 2 of 4.
    assert row.ensemble_accuracy == 0.75


def test_compare_exits_refuses_logits_of_other_images() -> None:
    with pytest.raises(ValueError, match="same"):
        compare_exits(torch.zeros(2, 5, 3), torch.zeros(2, 4, 3), torch.zeros(5, dtype=torch.long))


def _train(run: Path, **extra: object) -> Path:
    assert run_training(validate_config(tiny_config(run, **extra)))["complete"]
    return run


def test_compare_two_runs_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _train(tmp_path / "a", seed=1)
    b = _train(tmp_path / "b", seed=2)
    out = tmp_path / "cmp.json"
    assert main(["compare", str(a), str(b / "last.pt"), "--split", "both", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "val split, 64 images" in printed and "test split, 64 images" in printed
    # The accuracies are those `evaluate` measures for each run on its own.
    for name, run in (("a", a), ("b", b)):
        assert main(["evaluate", "--run-dir", str(run)]) == 0
        ev = json.loads((run / "evaluation.json").read_text())
        for part in ("val", "test"):
            got = [r[f"accuracy_{name}"] for r in report[part]["exits"]]
            assert got == pytest.approx(ev[f"{part}_exit_accuracy"])
    for r in report["val"]["exits"]:  # the paired counts agree with the accuracies
        assert r["accuracy_a"] - r["accuracy_b"] == pytest.approx((r["only_a"] - r["only_b"]) / 64)
        assert 0.0 <= r["p_value"] <= 1.0


def test_a_run_compared_with_itself_is_an_exact_tie(tmp_path: Path) -> None:
    a = _train(tmp_path / "a")
    out = tmp_path / "self.json"
    assert main(["compare", str(a), str(a), "--json", str(out)]) == 0
    for r in json.loads(out.read_text())["val"]["exits"]:
        assert (r["only_a"], r["only_b"], r["p_value"]) == (0, 0, 1.0)
        assert r["ensemble_accuracy"] == pytest.approx(r["accuracy_a"])


def test_runs_on_different_splits_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _train(tmp_path / "a")
    b = _train(tmp_path / "b", data={"split_seed": 7})
    assert main(["compare", str(a), str(b)]) == EXIT_CONFIG
    assert "data.split_seed" in capsys.readouterr().err


def test_a_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _train(tmp_path / "a")
    assert main(["compare", str(a), str(tmp_path / "nowhere")]) == EXIT_ARTIFACT
    assert "no checkpoint at" in capsys.readouterr().err
