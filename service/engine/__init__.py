"""Batching, the early-exit executor and the backends; knows nothing of HTTP."""

from service.engine.engine import EngineConfig, ModelEngine
from service.engine.factory import build_engine
from service.engine.loader import LoadedModel, load_model
from service.engine.work import ImageResult, RequestWork

__all__ = [
    "EngineConfig",
    "ImageResult",
    "LoadedModel",
    "ModelEngine",
    "RequestWork",
    "build_engine",
    "load_model",
]
