"""Early-exit inference service: FastAPI + uvicorn over model packages (see README)."""
