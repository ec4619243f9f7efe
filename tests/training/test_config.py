"""Config loading: YAML + overrides; unknown or ill-typed keys are errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.checks import SPLIT_KEYS
from training.cli import build_parser, main, train_flags
from training.config import ConfigError, TrainConfig, load_config

from .helpers import tiny_config, write_config


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))
    cfg = load_config(path, ["optim.lr=0.2", "ge=true", "model.isc=true", "data.input_size=[32, 32]"])
    assert cfg.optim.lr == 0.2 and cfg.ge is True and cfg.model.isc is True
    assert cfg.data.input_size == (32, 32)
    assert cfg.batch_size == 32  # from the file
    with pytest.raises(Exception, match="frozen"):
        cfg.epochs = 3  # type: ignore[misc]


def test_flags_are_taken_as_given_and_set_wins_over_them(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))
    argv = ["train", "--run-dir", "/runs/lr 0.1 #x", "--kd-teacher", "2024", "--epochs", "4",
            "--kd", "--isc", "--set", "epochs=5"]  # fmt: skip
    args = build_parser().parse_args(argv)
    cfg = load_config(path, list(args.set), values=train_flags(args))
    # As YAML, "#x" would be a comment and 2024 a number; a path is text.
    assert str(cfg.run_dir) == "/runs/lr 0.1 #x" and cfg.kd_teacher == "2024"
    assert cfg.kd is True and cfg.model.isc is True and cfg.epochs == 5


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optim.lerning_rate=0.1", "optim.lerning_rate: unknown key"),
        ("epochs=many", "epochs"),
        ("data.source=mnist", "data.source"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_keys_are_named(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_cli_bad_key_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config(tmp_path / "run")
    cfg["optim"]["momentun"] = 0.9
    path = write_config(tmp_path / "bad.yaml", cfg)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "optim.momentun: unknown key" in err
    assert "Traceback" not in err


def test_cli_missing_data_dir_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config(tmp_path / "run", data={"source": "imagefolder"})
    path = write_config(tmp_path / "c.yaml", cfg)
    missing = tmp_path / "no-such-dir"
    assert main(["train", "--config", str(path), "--data-dir", str(missing)]) == 3
    assert f"data directory not found: {missing}" in capsys.readouterr().err


def test_help_texts() -> None:
    for command in ("train", "evaluate", "calibrate", "export"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0


# Training configs; an ablation plan (configs/frontier/ablation.yaml) is checked by test_ablation.
SHIPPED_CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[2] / "configs").rglob("*.yaml")
    if "rows" not in (yaml.safe_load(p.read_text()) or {})
)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path) -> None:
    """A typo in a committed config would otherwise surface hours into `make train-default`."""
    init = {"init_from": "run/last.pt"} if "stage2" in path.name else None  # given on the CLI
    assert load_config(path, values=init).epochs >= 1


def test_the_default_model_phases_share_one_split_and_model() -> None:
    # Each phase starts from the one before (--init-from), which is refused across splits/models.
    phases = [p for p in SHIPPED_CONFIGS if p.name.startswith("msdnet_cifar10_default")]
    assert len(phases) >= 2
    configs = [load_config(p) for p in phases]
    split = [{k: getattr(c.data, k) for k in SPLIT_KEYS} for c in configs]
    assert all((s, c.model) == (split[0], configs[0].model) for s, c in zip(split, configs, strict=True))


def test_each_recipe_trains_its_stages_for_their_epochs() -> None:
    def cfg(recipe: str) -> TrainConfig:
        extra = {"init_from": "runs/x/last.pt"} if recipe == "stage2" else {}
        return TrainConfig(recipe=recipe, epochs=4, stage2_epochs=2, kd=True, **extra)  # type: ignore[arg-type]

    assert cfg("joint").stages() == ["joint"] and cfg("joint").total_epochs() == 4
    two = cfg("two-stage")
    assert two.stages() == ["stage1", "stage2"] and two.stage_epochs("stage2") == 2
    assert two.total_epochs() == 6
    # a stage2 run is that stage alone, as long as `epochs`: stage2_epochs is the two-stage recipe's
    assert cfg("stage2").stages() == ["stage2"] and cfg("stage2").total_epochs() == 4
