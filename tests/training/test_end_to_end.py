"""train 1 epoch -> evaluate -> calibrate -> export -> load_package -> stage-wise early exit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from models.exit_policy import confidences
from models.package import load_package
from service.policy import leaving_now
from training.augment import normalize
from training.cli import main
from training.config import validate_config
from training.data import load_dataset

from .helpers import TINY_MODEL, tiny_config, write_config


def test_train_calibrate_export_serve_semantics(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(run, ge=True, kd=True, model={**TINY_MODEL, "isc": True}, epochs=2, stop_after=1)
    path = write_config(tmp_path / "c.yaml", cfg)
    assert main(["train", "--config", str(path)]) == 0
    assert (run / "last.pt").is_file() and len((run / "log.jsonl").read_text().splitlines()) == 1
    assert main(["calibrate", "--run-dir", str(run), "--budgets", "0.5,0.7,1.0"]) == 0
    calibration = json.loads((run / "calibration.json").read_text())
    assert [r["budget"] for r in calibration["budgets"]] == [0.5, 0.7, 1.0]
    assert (run / "calibration.png").stat().st_size > 0
    pkg_dir = tmp_path / "pkg"
    assert main(["export", "--run-dir", str(run), "--out", str(pkg_dir), "--name", "e2e"]) == 0

    pkg = load_package(pkg_dir)
    m = pkg.manifest
    # The table: distinct front points, cheapest first, the full network last; the default is the
    # row a request for budget 0.5 gets.
    offered = [b.budget for b in m.budgets]
    assert offered == sorted(set(offered)) and offered[-1] == 1.0
    assert m.default_budget == max(b for b in offered if b <= 0.5)
    assert m.provenance.split_seed == 0
    assert m.provenance.training_config is not None and m.provenance.training_config["ge"] is True
    # Rebuild the held test split from the recorded config and run the model stage by stage,
    # dropping the samples that exit by the service's rule.
    data = load_dataset(validate_config(m.provenance.training_config).data)
    pre = m.preprocessing
    x = normalize(data.test.x, pre.mean, pre.std)
    for row in m.budgets:
        thresholds = np.array(row.thresholds, dtype=np.float32)
        preds = torch.full((len(x),), -1, dtype=torch.int64)
        exit_of = torch.full((len(x),), -1, dtype=torch.int64)
        alive = torch.arange(len(x))
        state: tuple[torch.Tensor, ...] = (x,)
        with torch.no_grad():
            for k in range(m.num_exits):
                state, logits = pkg.model.forward_stage(k, state)
                conf, pred = confidences(logits)
                n, last = len(conf), m.num_exits - 1
                mask = leaving_now(
                    conf.numpy(), np.full(n, thresholds[k]), np.full(n, last), k, m.num_exits
                )
                leave = torch.from_numpy(mask)
                preds[alive[leave]], exit_of[alive[leave]] = pred[leave], k
                alive = alive[~leave]
                state = tuple(s[~leave] for s in state)
        accuracy = (preds == data.test.y).float().mean().item()
        fractions = torch.bincount(exit_of, minlength=m.num_exits).double() / len(x)
        compute = float((fractions * torch.tensor([e.compute_fraction for e in m.exits])).sum())
        assert row.accuracy is not None and abs(accuracy - row.accuracy) < 1e-6, row.budget
        assert abs(compute - row.expected_compute_fraction) < 1e-6, row.budget
        assert row.exit_fractions is not None
        assert torch.allclose(fractions, torch.tensor(row.exit_fractions, dtype=torch.float64))
    full = m.budget_entry(1.0)
    assert full.thresholds == [2.0] * m.num_exits and full.exit_fractions == [0.0, 0.0, 1.0]

    # Training on makes the saved logits and thresholds stale: export refuses them, and
    # calibrate evaluates the new weights.
    assert torch.load(run / "logits.pt")["source"][:2] == ["joint", 1]
    write_config(path, {**cfg, "stop_after": None})
    assert main(["train", "--config", str(path), "--resume"]) == 0
    assert main(["export", "--run-dir", str(run), "--out", str(tmp_path / "p2"), "--name", "e"]) == 5
    assert not (tmp_path / "p2").exists()
    assert main(["calibrate", "--run-dir", str(run), "--budgets", "0.5,1.0"]) == 0
    assert torch.load(run / "logits.pt")["source"][:2] == ["joint", 2]
