"""Early-exit inference service: FastAPI + uvicorn over model packages (see docs/service.md)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("anytime")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
