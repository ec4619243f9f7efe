"""Service settings: pydantic-settings, one prefix (``ANYTIME_``), nested parts are BaseModels.

Sources, highest priority first: command line (``python -m service``), constructor arguments,
environment (``ANYTIME_MODELS='["packages/default"]'``, nested with ``__`` as in
``ANYTIME_BATCHING__MAX_BATCH_SIZE=16``), then a YAML or JSON file named by ``config_file``
(``--config-file`` or ``ANYTIME_CONFIG_FILE``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from service.schemas import Budget

Backend = Literal["torch", "onnxruntime", "auto"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "int8", "bf16", "auto"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchingSettings(_Part):
    """Dynamic batching across concurrent requests (one batcher per model)."""

    enabled: bool = Field(True, description="batch concurrent requests; off = one request per batch")
    max_batch_size: int = Field(32, ge=1, le=4096, description="most images in one stage-0 batch")
    max_delay_ms: float = Field(
        0.0,
        ge=0,
        le=10_000,
        description="longest an image waits for others to fill its batch; 0 = run as soon as a "
        "worker is free (batches form from what queued meanwhile; measured best, "
        "docs/serving-performance.md)",
    )
    queue_size: int = Field(
        256, ge=1, description="most images waiting per model; beyond it requests get 429"
    )
    workers: int = Field(1, ge=1, le=64, description="inference worker threads per model")
    mode: Literal["run_to_end", "shrink", "rebatch"] = Field(
        "shrink",
        description="run_to_end: every image runs every stage (answers still leave early); "
        "shrink: a batch shrinks at each exit; rebatch: survivors of several batches wait in "
        "each stage's queue and run together (docs/engine.md)",
    )
    rebatch_max_wait_ms: float = Field(
        20.0, ge=0, le=10_000, description="cap of a stage queue's adaptive wait in rebatch mode"
    )


class SloSettings(_Part):
    """Optional SLO controller: lowers the budget of requests that pin none as load grows."""

    p99_target_ms: float | None = Field(
        None, gt=0, description="p99 latency target per model; None = controller off"
    )
    window_s: float = Field(2.0, gt=0, description="sliding window of the p99")
    interval_ms: float = Field(100.0, ge=0, description="shortest time between two budget steps")
    max_accuracy_loss: float | None = Field(
        None,
        ge=0,
        le=1,
        description="lowest budget the controller may choose: test accuracy (budget table) at most "
        "this below the default budget's (0.01 = 1 point); None = any row of the table",
    )


class GuardSettings(_Part):
    """Accuracy guard: audit a fraction of early answers against the final exit."""

    fraction: float = Field(
        0.0, ge=0, le=1, description="share of early answers also run to the final exit (0 = off)"
    )
    window: int = Field(200, ge=1, description="audits per exit in the agreement window")
    floor: float | None = Field(
        None, ge=0, le=1, description="agreement below which the exit's threshold is raised"
    )
    step: float = Field(0.02, gt=0, le=1, description="threshold increase per tightening")
    min_samples: int = Field(50, ge=1, description="audits needed before the floor is acted on")


class LimitSettings(_Part):
    """Limits on what one request may carry (decompression bombs, huge bodies)."""

    max_body_bytes: int = Field(32 * 2**20, ge=1, description="largest request body")
    max_image_bytes: int = Field(8 * 2**20, ge=1, description="largest encoded image")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="largest width*height of a decoded image"
    )
    max_images_per_request: int = Field(64, ge=1, description="most images in one request")
    inline_decode_bytes: int = Field(
        8192,
        ge=0,
        description="a request of one encoded image of at most this many bytes (and at most "
        "128x128 pixels) is decoded on the event loop: a thumbnail decodes in less time than a "
        "hop to a worker thread costs; other images decode in a worker thread; 0 = always there",
    )


class AuthSettings(_Part):
    """Optional API keys: with any set, every API route needs one (health routes stay open)."""

    api_keys: list[SecretStr] = Field(
        default_factory=list, description="accepted keys (Authorization: Bearer KEY or X-API-Key)"
    )
    protect_metrics: bool = Field(False, description="require a key for /metrics too")


class TorchSettings(_Part):
    """PyTorch backend options (fp16/bf16 only apply on CUDA)."""

    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="compute dtype on CUDA (CPU always runs float32)"
    )
    intra_op_threads: int | None = Field(
        None, ge=0, description="torch's threads only, overriding intra_op_threads (None = use it)"
    )


class SimulatedDeviceSettings(_Part):
    """A simulated accelerator for measuring topologies on a CPU machine (never for production):
    each stage run sleeps ``launch + per_image x batch`` on one device all processes share
    (service/engine/simulated.py); the defaults are derived from GPU figures (docs/topology.md)."""

    enabled: bool = Field(False, description="serve on the simulated device instead of a backend")
    launch_ms: float = Field(5.3, ge=0, description="fixed milliseconds of one stage run")
    per_image_us: float = Field(3.3, ge=0, description="microseconds each image adds to a stage run")
    lock_file: Path = Field(
        Path("/tmp/anytime-simulated-device"),
        description="the file whose lock is the device (every process naming it shares it)",
    )


EngineTopology = Literal["per-worker", "shared", "auto"]


class ServiceSettings(BaseSettings):
    """Every setting of the service; ``python -m service --help`` lists them all."""

    model_config = SettingsConfigDict(
        env_prefix="ANYTIME_",
        env_nested_delimiter="__",
        extra="forbid",
        cli_prog_name="python -m service",
        cli_kebab_case=True,
        cli_implicit_flags=True,
    )

    config_file: Path | None = Field(None, description="YAML or JSON file with settings")
    models: list[str] = Field(
        default_factory=list, description="model package paths (directories or .tar) to serve"
    )
    model_repository: Path | None = Field(
        None,
        description="model repository to serve (Triton's layout: DIR/<name>/<version>/, each a model "
        "package; docs/service.md), beside the models list",
    )
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        "none",
        description="none: load the repository once at start; poll: rescan it every "
        "repository_poll_secs; explicit: change only on /v2/repository load and unload requests",
    )
    repository_poll_secs: float = Field(15.0, gt=0, description="rescan period in poll mode")
    model_load_timeout_s: float = Field(
        300.0, gt=0, description="longest a load or unload request waits for every worker process"
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0 = any free port)")
    grpc: bool = Field(
        True,
        description="serve the Open Inference Protocol over gRPC too, on grpc_port (--no-grpc: off)",
    )
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="gRPC port on the same host (0 = any free port); every "
        "worker process listens on it (SO_REUSEPORT: the kernel spreads connections)",
    )
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto",
        description="server processes (per-worker topology: each loads its own model and engine, "
        "memory x N); auto: one per usable core, at most 8. One process is serialised on its GIL: "
        "on 2 CPU cores 2 serve 1.52x (budget 1.0) and 1.57x (budget 0.5) the images/s of 1 "
        "(docs/deployment.md); /metrics sums all of them",
    )
    pin_workers: bool = Field(
        True,
        description="with workers > 1, bind each process to its own share of the CPU cores: its "
        "threads then pass the interpreter lock on one core (on 2 cores, 2 workers served 5-19 % "
        "more images/s; docs/serving-performance.md); --no-pin-workers leaves them unbound",
    )
    engine_topology: EngineTopology = Field(
        "auto",
        description="per-worker: each server process has its own engines; shared: the server "
        "processes are front ends (HTTP, decoding) handing tensors through shared memory to one "
        "engine process per device; auto: shared on CUDA, per-worker on a CPU (docs/topology.md)",
    )
    backend: Backend = Field("auto", description="torch | onnxruntime | auto (faster one measured)")
    device: Device = Field("auto", description="auto = CUDA when it really works, else CPU")
    precision: Precision = Field(
        "auto",
        description="fp32; int8 (the package's int8 ONNX graphs and budget table, onnxruntime); "
        "bf16 (torch); auto = int8 where the package has it, it loses at most 0.3 point of test "
        "accuracy at every budget and it is faster here, else fp32 (docs/engine.md)",
    )
    default_budget: Budget | None = Field(
        None,
        description="budget when a request gives none (else the package's default); at least the "
        "package's lowest budget-table row, else start-up fails",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="deadline of a request from arrival; past it: 504"
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After header of a 429")
    intra_op_threads: int = Field(
        1,
        ge=0,
        description="threads inside one stage run, torch and onnxruntime; batching gives the "
        "parallelism and the event loop needs a core (1 measured fastest on 2 cores, "
        "docs/serving-performance.md); 0 = library default (all cores)",
    )
    warmup: bool = Field(True, description="run every stage once at start-up before /readyz is ok")
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    torch: TorchSettings = Field(default_factory=TorchSettings)
    slo: SloSettings = Field(default_factory=SloSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    simulated_device: SimulatedDeviceSettings = Field(default_factory=SimulatedDeviceSettings)
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    json_logs: bool = Field(False, description="log one JSON object per line")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, _ConfigFileSource(settings_cls))


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Lowest-priority source: the file named by ``config_file`` in a higher source."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("config_file")
        if not path:
            return {}
        return read_settings_file(Path(path))


class SettingsFileError(ValueError):
    """The settings file is missing or not a mapping of settings."""


def read_settings_file(path: Path) -> dict[str, Any]:
    """Parse a YAML (``.yaml``/``.yml``) or JSON settings file into a dict."""
    if not path.is_file():
        raise SettingsFileError(f"settings file not found: {path}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SettingsFileError(f"{path}: cannot parse settings ({e})") from None
    if not isinstance(data, dict):
        raise SettingsFileError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data
