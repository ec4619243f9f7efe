"""The factorial's configs (configs/imta) and the stage2 recipe end to end on synthetic data:
stage 1, then stage 2 from its checkpoint, each stopped and resumed exactly; the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.cli import EXIT_CONFIG, main
from training.config import ConfigError, load_config
from training.data import load_dataset, train_batches
from training.stages import build_stage
from training.trainer import seed_everything

ROOT = Path(__file__).resolve().parents[2]
STAGE1, STAGE2 = ROOT / "configs/imta/stage1.yaml", ROOT / "configs/imta/stage2_isc_kd.yaml"
SYNTHETIC = [
    "--set", "data.source=synthetic", "--set", "data.synthetic_size=320", "--set", "data.n_val=32",
    "--set", "data.n_test=32", "--set", "threads=1", "--set", "amp=none", "--set", "epochs=2",
    "--set", "deterministic=true", "--no-progress",
]  # fmt: skip


def test_the_configs_hold_the_official_recipe() -> None:
    s1 = load_config(STAGE1)
    s2 = load_config(STAGE2, values={"init_from": "runs/imta/ge/seed0/last.pt"})
    for cfg in (s1, s2):
        o = cfg.optim
        assert (o.lr, o.momentum, o.nesterov, o.weight_decay) == (0.1, 0.9, False, 1e-4)
        assert (o.schedule, o.milestones, o.gamma, o.warmup_epochs) == ("step", (0.5, 0.75), 0.1, 0)
        assert (cfg.batch_size, cfg.epochs, cfg.data.n_val, cfg.data.n_test) == (64, 60, 5000, 5000)
        assert cfg.model.kwargs == s1.model.kwargs and cfg.data == s1.data
    assert (s1.recipe, s1.ge, s1.lr_scaled, s1.kd, s1.model.isc) == ("joint", False, False, False, False)
    assert (s2.recipe, s2.kd_form, s2.kd_weight, s2.kd_temperature) == ("stage2", "official", 0.9, 3.0)
    assert (s2.stage2_bn, s2.model.isc, s2.model.isc_detach) == ("train", True, False)
    with pytest.raises(ConfigError, match="recipe 'stage2' needs init_from"):
        load_config(STAGE2)
    with pytest.raises(ConfigError, match="lr_scaled is the plain-training control for GE"):
        load_config(STAGE1, ["lr_scaled=true", "ge=true"])


def _train(config: Path, run: Path, *extra: str) -> None:
    assert main(["train", "--config", str(config), "--run-dir", str(run), *SYNTHETIC, *extra]) == 0


def test_stage1_then_stage2_each_resumed_exactly(tmp_path: Path) -> None:
    s1 = tmp_path / "ge"
    _train(STAGE1, s1, "--ge", "--stop-after", "1")
    _train(STAGE1, s1, "--ge", "--resume")
    init = ["--init-from", str(s1 / "last.pt")]
    straight, sliced = tmp_path / "straight", tmp_path / "sliced"
    _train(STAGE2, straight, *init)
    _train(STAGE2, sliced, *init, "--stop-after", "1")
    _train(STAGE2, sliced, *init, "--resume")
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(sliced / "last.pt")
    assert a["complete"] and b["complete"] and a["stage"] == "stage2"
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # The frozen network is stage 1's: its blocks' weights are in the stage-2 model unchanged.
    frozen = load_checkpoint(s1 / "last.pt")["model"]
    assert all(torch.equal(a["model"][k], v) for k, v in frozen.items() if k.endswith("conv.weight"))
    assert (straight / "stage1.pt").is_file()  # a resume needs the run directory alone
    records = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    last = records[-1]
    assert len(last["block_grad_norm"]) == len(last["head_grad_norm"]) == 5
    assert all(g == 0 for g in last["block_grad_norm"])  # frozen blocks
    assert all(g > 0 for g in last["head_grad_norm"]) and all(w > 0 for w in last["block_weight_norm"])
    first = json.loads((s1 / "log.jsonl").read_text().splitlines()[0])
    assert all(g > 0 for g in first["block_grad_norm"])


def test_stage2_refuses_an_unfinished_or_isc_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unfinished = tmp_path / "unfinished"
    _train(STAGE1, unfinished, "--stop-after", "1")
    args = ["train", "--config", str(STAGE2), "--run-dir", str(tmp_path / "s2"), *SYNTHETIC]
    assert main([*args, "--init-from", str(unfinished / "last.pt")]) == EXIT_CONFIG
    assert "from an unfinished run" in capsys.readouterr().err
    isc = tmp_path / "isc"
    _train(STAGE1, isc, "--isc", "--set", "epochs=1")
    assert main([*args, "--init-from", str(isc / "last.pt")]) == EXIT_CONFIG
    assert "without ISC" in capsys.readouterr().err


def test_the_seed_changes_initialisation_and_data_order_not_the_split(tmp_path: Path) -> None:
    cfg = {s: load_config(STAGE1, [a for a in SYNTHETIC if "=" in a] + [f"seed={s}"]) for s in (0, 1)}
    weights, first_batch, splits = {}, {}, {}
    for s, c in cfg.items():
        seed_everything(c.seed, False)
        weights[s] = build_stage(c, "joint", 10, tmp_path, torch.device("cpu")).model.state_dict()
        data = load_dataset(c.data)
        batches, _ = train_batches(data.train, c.data, c.batch_size, 0, c.seed)
        first_batch[s] = next(iter(batches))[1]
        splits[s] = data.info["test_indices_sha256"]
    assert not torch.equal(
        weights[0]["blocks.0.0.layers.0.0.weight"], weights[1]["blocks.0.0.layers.0.0.weight"]
    )
    assert not torch.equal(first_batch[0], first_batch[1])
    assert splits[0] == splits[1]
