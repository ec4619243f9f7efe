"""Request and response models of the REST API (v1, KServe v2), the options model, the errors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# A compute budget: the fraction of the full network's FLOPs, in (0, 1] (requests and settings).
Budget = Annotated[float, Field(gt=0, le=1)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors ----------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable error code, e.g. bad_image, queue_full")
    message: str = Field(description="what went wrong, for a human")
    detail: Any = Field(None, description="structured detail (offending field, limits)")


class ErrorEnvelope(BaseModel):
    """The shape of every error response of v1 and the health routes."""

    error: ErrorBody


class V2Error(BaseModel):
    """The shape of every error response under ``/v2`` (Open Inference Protocol)."""

    error: str = Field(description="what went wrong, for a human")


# -- v1 ----------------------------------------------------------------------------------------------
class ExitInfo(BaseModel):
    index: int
    flops: int = Field(description="cumulative FLOPs of one image leaving here")
    compute_fraction: float = Field(description="flops over the full network's")


class BudgetInfo(BaseModel):
    budget: float
    expected_compute_fraction: float
    accuracy: float | None = None
    expected_ms_per_image: float | None = Field(
        None, description="compute of one image sent alone, measured on this device at start-up"
    )
    expected_images_per_s: float | None = Field(
        None, description="images/s of one engine worker in full batches, measured at start-up"
    )


class ModelInfo(BaseModel):
    name: str
    version: str
    classes: list[str]
    num_exits: int
    exits: list[ExitInfo]
    budgets: list[BudgetInfo]
    default_budget: float = Field(
        description="budget of a request that gives neither a budget nor a threshold, now (the "
        "service's default, else the package's; an SLO controller lowers it under load)"
    )
    precision: str = Field("fp32", description="what the stages run at: fp32, int8, bf16 (fp16 on CUDA)")


class ModelList(BaseModel):
    models: list[ModelInfo]


class InferenceOptions(_Request):
    """The options of one inference request, the same model for every protocol.

    v1 reads them from the query string or the JSON body, v2 from the request's ``parameters``.
    The ranges here are the schema's; what a model offers can be narrower (its budget table, its
    number of exits): :func:`service.policy.resolve_plan` answers those with a 422 naming the
    allowed range.
    """

    budget: Budget | None = Field(
        None,
        description="fraction of the full network's FLOPs; model-dependent: the lowest budget a "
        "model offers is the first row of its budget table (GET /v1/models/{name}), below it: 422",
    )
    max_exit: int | None = Field(
        None,
        ge=0,
        description="deepest exit an image may use (0-based); model-dependent: at most "
        "num_exits - 1 (GET /v1/models/{name}), beyond it: 422",
    )
    threshold: float | None = Field(
        None, ge=0, le=1, description="one confidence for every exit; overrides the budget"
    )
    top_k: int = Field(1, ge=1, le=1000, description="how many classes to list per image (v1)")
    deadline_ms: float | None = Field(
        None,
        gt=0,
        description="answer within this many ms of arrival: an image that would miss it by "
        "running its next stage gets its latest exit's answer (deadline_exit: true)",
    )


class ClassifyJSON(InferenceOptions):
    """JSON body of ``classify``: base64-encoded images plus the options."""

    images: list[str] = Field(description="base64-encoded image files")


class TopK(BaseModel):
    class_index: int
    class_name: str
    probability: float


class Prediction(BaseModel):
    class_index: int
    class_name: str
    confidence: float
    exit: int = Field(description="0-based index of the exit that answered")
    compute_fraction: float = Field(description="FLOPs this image used over the full network's")
    top_k: list[TopK]
    deadline_exit: bool = Field(
        False, description="answered early because its next stage would have missed deadline_ms"
    )


class ClassifyResponse(BaseModel):
    model: str
    version: str = Field(description="the model version that answered")
    budget: float | None = Field(description="budget used; null when a threshold overrode it")
    predictions: list[Prediction]


# -- KServe v2 (Open Inference Protocol) -------------------------------------------------------------
V2Output = Literal[
    "probabilities", "class_index", "exit", "confidence", "compute_fraction", "deadline_exit"
]  # fmt: skip


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class V2InputTensor(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: Literal["BYTES", "FP32"] = Field(
        description="BYTES: encoded image files [N]; FP32: preprocessed images [N, 3, H, W]"
    )
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(
        None, description="row-major values (BYTES as base64); absent with binary_data_size"
    )


class V2RequestedOutput(BaseModel):
    name: V2Output
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2InputTensor] = Field(min_length=1, max_length=1, description="exactly one input")
    outputs: list[V2RequestedOutput] | None = None


class V2OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2OutputTensor]


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2RepositoryIndexRequest(_Request):
    ready: bool = Field(False, description="only the versions ready for inference")


class V2RepositoryModel(BaseModel):
    name: str
    version: str | None = Field(None, description="absent: an error of the model's directory")
    state: Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]
    reason: str = Field("", description="why it is unavailable (a failed load, a bad directory)")


class V2RepositoryLoadRequest(_Request):
    parameters: dict[str, Any] | None = Field(
        None,
        description="'config': a JSON model config whose version_policy replaces the model's "
        '(Triton\'s: {"version_policy": {"specific": {"versions": [2]}}}); others are ignored',
    )


class V2RepositoryUnloadRequest(_Request):
    parameters: dict[str, Any] | None = Field(None, description="ignored (unload_dependents)")


# -- health ------------------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    models: dict[str, bool] = Field(description="each configured model: loaded and warmed up")
