"""Training configuration: frozen pydantic models built from a YAML file plus command-line overrides.

Every model forbids unknown keys, so a typo (``lerning_rate``) is an error that names the key
instead of a silently ignored setting. Overrides use dotted paths (``optim.lr=0.05``) and are
parsed as YAML scalars, so ``true``, ``0.1`` and ``[1, 2]`` get their natural types.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.validation import describe_validation_error


class ConfigError(Exception):
    """A configuration file or override is invalid; the message names the key and the problem."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Frozen):
    """Which registered architecture to build (``models.create_model``) and its ISC option."""

    name: str = "msdnet"
    kwargs: dict[str, Any] = Field(default_factory=dict, description="constructor overrides")
    isc: bool = Field(False, description="Inline Subnetwork Collaboration (IMTA section 3.2)")
    isc_detach: bool = Field(False, description="cut the backward path through the ISC link")


class DataConfig(_Frozen):
    """Where the images come from and how they are split (fixed seed, recorded in the package)."""

    source: Literal[
        "cifar10-jpg", "imagefolder", "torchvision-cifar10", "torchvision-cifar100", "synthetic"
    ] = "cifar10-jpg"
    path: str | None = Field(
        None,
        description="cifar10-jpg: the .tar.gz or its extracted tree; imagefolder: the class-folder "
        "root; torchvision-*: the dataset root. Default for cifar10-jpg: ../shared/data archive.",
    )
    cache_dir: str = Field("~/.cache/anytime/data", description="extracted trees and decoded caches")
    input_size: tuple[int, int] = (32, 32)
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
    augment: Literal["crop-flip", "resized-crop-flip", "none"] = "crop-flip"
    crop_padding: int = Field(4, ge=0)
    pad_mode: Literal["zeros", "reflect"] = Field(
        "zeros", description="crop-flip: how the border is padded before the random crop"
    )
    policy: Literal["none", "trivialaugment"] = Field(
        "none",
        description="per-image photometric/geometric policy after the crop (TrivialAugmentWide, "
        "Mueller & Hutter 2021, torchvision's, one draw per image); none = off",
    )
    cutout: int = Field(
        0,
        ge=0,
        description="Cutout (DeVries & Taylor 2017): zero one square of this side per training "
        "image after the augmentation above (CIFAR: 16); 0 = off",
    )
    n_val: int = Field(2500, ge=0, description="validation images (threshold fitting, model selection)")
    n_test: int = Field(2500, ge=0, description="held test images (reported figures only)")
    split_seed: int = 0
    limit_train: int | None = Field(None, ge=1, description="use only this many training images")
    synthetic_size: int = Field(512, ge=8, description="synthetic: total images")
    synthetic_classes: int = Field(10, ge=2)


class OptimConfig(_Frozen):
    """SGD with nesterov momentum, weight decay and a warm-up + cosine or step schedule."""

    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "linear", "step", "constant"] = Field(
        "cosine",
        description="after the warm-up: cosine or linear to 0, step drops, or constant (suits an "
        "SWA phase, swa_start)",
    )
    warmup_epochs: float = Field(1.0, ge=0)
    warmup_start: float = Field(
        0.0, ge=0, le=1, description="the warm-up rises linearly from this fraction of lr to lr"
    )
    norm_bias_lr_scale: float = Field(
        1.0,
        gt=0,
        description="learning rate x this for BatchNorm biases, their weight decay / this (the "
        "same decay per step); airbench's 64 for networks whose BatchNorm scales are fixed",
    )
    milestones: tuple[float, ...] = Field(
        (0.5, 0.75), description="step schedule: fractions of the epochs where lr drops by gamma"
    )
    gamma: float = Field(0.1, gt=0)


RECIPE_STAGES = {"joint": ["joint"], "two-stage": ["stage1", "stage2"], "stage2": ["stage2"]}


class TrainConfig(_Frozen):
    """One training run. ``recipe`` picks the joint or the official two-stage procedure."""

    run_dir: str = "runs/default"
    seed: int = 0
    epochs: int = Field(50, ge=1)
    stage2_epochs: int = Field(10, ge=1, description="two-stage recipe: epochs of the second stage")
    stop_after: int | None = Field(
        None, ge=1, description="stop after this many epochs in total (time-slicing); --resume later"
    )
    batch_size: int = Field(128, ge=1, description="per process")
    eval_batch_size: int = Field(500, ge=1)
    recipe: Literal["joint", "two-stage", "stage2"] = Field(
        "joint",
        description="joint: one stage, everything trained together; two-stage: the official "
        "procedure (stage 1, then new exit heads on the frozen network); stage2: that second stage "
        "alone, on the finished run named by init_from",
    )
    ge: bool = Field(False, description="Gradient Equilibrium (IMTA section 3.1)")
    lr_scaled: bool = Field(
        False,
        description="control arm for GE (joint recipe, without ge): block i's learning rate "
        "times 1/(K - i), GE's gradient factor, the exit heads' unscaled (training/blocks.py)",
    )
    kd: bool = Field(False, description="one-for-all knowledge distillation (IMTA section 3.3)")
    kd_form: Literal["batchmean", "official"] = Field(
        "batchmean",
        description="KL reduction of the KD term: batchmean (per-sample KL) or official (the "
        "official code's KLDivLoss(): mean over batch and classes); training/losses.py",
    )
    kd_temperature: float = Field(3.0, gt=0)
    kd_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="g: weight of the KD term at early exits (default 0.5; 0.9 for kd_form official)",
    )
    stage2_bn: Literal["eval", "train"] = Field(
        "eval",
        description="stage 2: the frozen network's BatchNorm layers keep their statistics (eval) "
        "or normalise with the batch's and update them (train, as the official code)",
    )
    kd_teacher: str | list[str] | None = Field(
        None,
        description="a finished run's checkpoint (last.pt) or an exported model package (directory "
        "or .tar), trained on the same data split, whose last exit, frozen, teaches every exit of "
        "this run, the last one included (joint recipe, needs kd); a list of several: their last "
        "exits' logits, averaged, teach (an ensemble); default: the run's own last exit teaches "
        "the earlier ones",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="label smoothing of every cross-entropy term (0.2: airbench)"
    )
    lookahead: bool = Field(
        False,
        description="every 5 steps pull an exponential average of the weights towards them and "
        "copy it back (airbench's lookahead; its decay rises as 0.95^5 x progress^3); at the end "
        "the weights are the average (training/lookahead.py)",
    )
    eval_tta: Literal["none", "flip", "flip-translate"] = Field(
        "none",
        description="test-time augmentation of validation/test accuracy: mean logits over the "
        "mirror image (flip) and 1-pixel translations (flip-translate, 6 views); the served "
        "network never uses it",
    )
    kd_teacher_tta: Literal["none", "flip"] = Field(
        "none", description="kd_teacher: average the teacher's logits over the image and its mirror"
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch default)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "none", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA and on a CPU with native bf16 (AVX-512 BF16, "
        "AMX), fp32 on other CPUs",
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto",
        description="NHWC weights: auto = on where the step runs in bf16 (1.7-2.2x faster steps "
        "on an H200, 1.9x on a Xeon with AMX), off in fp32 (slower there); docs/training.md",
    )
    max_bad_steps: int = Field(5, ge=1, description="stop after this many non-finite losses in a row")
    deterministic: bool = False
    progress: bool = True
    init_from: str | None = Field(
        None,
        description="a finished run's checkpoint (last.pt) on this run's split: its weights start "
        "the first stage (a warm restart with a fresh optimiser and schedule, SGDR), or, for "
        "recipe stage2, its network is the frozen one the new heads read",
    )
    swa_start: int | None = Field(
        None,
        ge=1,
        description="stochastic weight averaging (joint recipe): average the weights at the end of "
        "every epoch from this one (1-based) on; the final model is the average, BatchNorm "
        "statistics recomputed on the training split (training/swa.py)",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)

    def stages(self) -> list[str]:
        """The stages the recipe trains, in order."""
        return list(RECIPE_STAGES[self.recipe])

    def stage_epochs(self, stage: str) -> int:
        """Epochs of ``stage``: the two-stage recipe's second stage has its own length
        (``stage2_epochs``); every other stage, a stage2 run's included, trains ``epochs``."""
        return self.stage2_epochs if stage == "stage2" and self.recipe == "two-stage" else self.epochs

    def total_epochs(self) -> int:
        """Epochs over all the recipe's stages: what a finished run has logged."""
        return sum(self.stage_epochs(s) for s in self.stages())

    @model_validator(mode="before")
    @classmethod
    def _official_kd_weight(cls, raw: Any) -> Any:
        # The official form's own default (kalviny/IMTA args.py: gamma 0.9); a given value wins.
        if isinstance(raw, dict) and raw.get("kd_form") == "official" and "kd_weight" not in raw:
            return {**raw, "kd_weight": 0.9}
        return raw

    @field_validator("kd_teacher")
    @classmethod
    def _one_teacher_is_a_string(cls, value: str | list[str] | None) -> str | list[str] | None:
        # One teacher reads as it did before lists existed, whether given as [path] or path: a
        # checkpoint's config (and its resume check) stays the same.
        return value[0] if isinstance(value, list) and len(value) == 1 else value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.recipe != "joint" and self.model.isc is False and self.kd is False:
            # Stage 2 exists to train ISC heads with KD; without either it would just retrain heads.
            raise ValueError(f"recipe '{self.recipe}' needs --isc and/or --kd for its second stage")
        if self.recipe == "stage2" and self.init_from is None:
            raise ValueError("recipe 'stage2' needs init_from: the finished stage-1 run's last.pt")
        if self.recipe == "stage2" and self.ge:
            raise ValueError("ge belongs to stage 1: recipe 'stage2' trains heads on a frozen network")
        if self.lr_scaled and (self.ge or self.recipe != "joint"):
            # A control for GE: GE's factor applied twice, or to a frozen network, means nothing.
            raise ValueError("lr_scaled is the plain-training control for GE: recipe 'joint' without ge")
        if self.lr_scaled and self.optim.norm_bias_lr_scale != 1.0:
            raise ValueError("lr_scaled and optim.norm_bias_lr_scale: choose one per-group rate")
        if self.kd_teacher == []:
            raise ValueError("kd_teacher: an empty list; name one teacher or more, or leave it out")
        if self.kd_teacher is not None and (self.recipe != "joint" or not self.kd):
            raise ValueError("kd_teacher needs recipe 'joint' and kd: true")
        if self.swa_start is not None:
            if self.recipe != "joint":
                # Stage 2 trains heads on a frozen backbone whose BatchNorm statistics stay fixed;
                # the SWA BatchNorm pass would re-estimate them.
                raise ValueError("swa_start: stochastic weight averaging needs recipe 'joint'")
            if self.swa_start > self.epochs:
                raise ValueError(f"swa_start {self.swa_start} is after the last epoch ({self.epochs})")
        return self


def load_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    values: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Build a :class:`TrainConfig` from a YAML file, typed ``values`` and ``key.sub=value`` overrides.

    ``values`` (dotted key -> Python value, e.g. the command line's flags) are set as they are, so
    a path such as ``/runs/a #3`` stays a string; ``overrides`` are parsed as YAML and win over both.

    Raises:
        ConfigError: unreadable file, malformed override, or unknown / ill-typed key (named).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        raw = loaded or {}
    for key, value in (values or {}).items():
        set_dotted(raw, key, value)
    for item in overrides or []:
        apply_override(raw, item)
    return validate_config(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in the nested dict ``raw`` (value parsed as a YAML scalar/list)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=0.05)")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    set_dotted(raw, key, value)


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key`` ``a.b.c``, creating sections on the way."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}=...: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def recorded_config(raw: Mapping[str, Any], data_path: str | None = None) -> TrainConfig:
    """A run's recorded config, validated; its data read from ``data_path`` when given (the
    machine that evaluates may keep the data elsewhere than the one that trained)."""
    raw = dict(raw)
    if data_path:
        raw["data"] = {**raw["data"], "path": data_path}
    return validate_config(raw)


def validate_config(raw: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict; every problem is reported with its dotted key."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError("invalid config: " + describe_validation_error(e, "config")) from None


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists), for checkpoints and provenance."""
    return cfg.model_dump(mode="json")
