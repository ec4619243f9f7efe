"""One wording for pydantic validation errors, wherever a config, manifest or request is checked."""

from __future__ import annotations

from pydantic import ValidationError


def validation_problems(error: ValidationError, root: str) -> list[tuple[str, str]]:
    """``(dotted key, problem)`` per error; ``root`` names the whole object when the error has no
    key (a model-level check). An unknown key reads "unknown key" rather than pydantic's wording."""
    problems = []
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"]) or root
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        problems.append((loc, msg))
    return problems


def describe_validation_error(error: ValidationError, root: str) -> str:
    """The problems of :func:`validation_problems` on one line: ``"a.b: problem; c: problem"``."""
    return "; ".join(f"{loc}: {msg}" for loc, msg in validation_problems(error, root))
