"""Batching, the early-exit executor and the backends; knows nothing of HTTP."""

from service.engine.engine import EngineConfig, ModelEngine
from service.engine.executor import ImageResult, RequestWork
from service.engine.loader import LoadedModel, load_model

__all__ = ["EngineConfig", "ImageResult", "LoadedModel", "ModelEngine", "RequestWork", "load_model"]
