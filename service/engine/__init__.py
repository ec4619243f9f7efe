"""Batching, the early-exit executor and the backends; knows nothing of HTTP."""

from service.engine.config import EngineConfig
from service.engine.engine import ModelEngine
from service.engine.factory import LoadedModel, build_engine, load_model
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
