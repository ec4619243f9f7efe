"""Multi-exit architectures, their per-exit FLOPs, and the model package (training <-> service)."""

from models.multi_exit import ExitHead, MultiExitNet, State
from models.registry import create_model, list_models, register_model

# The built-in architectures register themselves (their @register_model) on import: importing
# them here, once, keeps the registry free of imports back into the architectures.
from models import msdnet, resnet_exits, widenet  # noqa: F401  # isort: skip

__all__ = ["ExitHead", "MultiExitNet", "State", "create_model", "list_models", "register_model"]
