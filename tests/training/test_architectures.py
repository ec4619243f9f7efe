"""The candidate table: per-exit multiply-adds and real ONNX Runtime stage times."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from training.architectures import main


def test_table_of_a_candidate_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {
        "model": {
            "name": "widenet",
            "kwargs": {"groups": [[16, 1, True], [32, 2, True]], "exit_after": [0, 1]},
        }
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "rows.json"
    assert main(["--config", str(path), "--batch", "4", "--repeats", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())[str(path)]
    assert [r["exit"] for r in rows] == [0, 1]
    assert rows[0]["mult_adds_millions"] < rows[1]["mult_adds_millions"]
    assert all(r["stage_ms_per_image"] > 0 for r in rows)
    assert rows[-1]["cumulative_ms_share"] == pytest.approx(1.0) and rows[-1]["flops_share"] == 1.0
    assert "time share" in capsys.readouterr().out


def test_a_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: {nme: widenet}\n")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(path)])
    assert e.value.code == 2
