"""Architecture registry: one place that maps a name to a multi-exit network factory.

Modelled on torchvision's ``models/_api.py`` and timm's ``_registry.py``: factories register
themselves with a decorator, and ``create_model`` builds one by name with keyword overrides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from models.multi_exit import MultiExitNet

Factory = Callable[..., "MultiExitNet"]
F = TypeVar("F", bound=Callable[..., Any])

_REGISTRY: dict[str, Factory] = {}


class UnknownModelError(KeyError):
    """Raised for a model name that no factory registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


def register_model(name: str | None = None) -> Callable[[F], F]:
    """Decorator registering a factory ``(**kwargs) -> MultiExitNet`` under ``name``.

    Args:
        name: registry key; defaults to the function's ``__name__``.
    """

    def decorator(factory: F) -> F:
        key = name or factory.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Sorted names of every registered architecture."""
    return sorted(_REGISTRY)


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def create_model(name: str, **kwargs: Any) -> MultiExitNet:
    """Build a registered architecture.

    Args:
        name: a name from :func:`list_models`.
        **kwargs: constructor overrides (for example ``num_classes=100, isc=True``).

    Raises:
        UnknownModelError: ``name`` is not registered; the message lists the known names.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownModelError(f"unknown model {name!r}; registered models: {known}") from None
    model = factory(**kwargs)
    # Recorded so that a model package can rebuild this exact network from itself alone.
    model.arch_name = name
    model.arch_kwargs = dict(kwargs)
    return model
