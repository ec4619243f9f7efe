"""Multi-exit architectures, their per-exit FLOPs, and the model package (training <-> service)."""

from models.multi_exit import ExitHead, MultiExitNet, State
from models.registry import create_model, list_models, register_model

__all__ = ["ExitHead", "MultiExitNet", "State", "create_model", "list_models", "register_model"]
