"""``python -m tests.integration.traced_server ARGS``: ``python -m service ARGS`` (one process)
that writes every span it ends as one JSON line (``ReadableSpan.to_json``) to the file named by
``$TRACED_SPANS``.

The gRPC server cannot be traced inside the test process, where an in-memory exporter would do:
its messages and Triton's gRPC client's share protobuf's global names (service/grpc/__init__.py).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from service.__main__ import main

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

SPANS_ENV = "TRACED_SPANS"


def file_provider(environ: Mapping[str, str]) -> TracerProvider:
    """A provider that writes each span as it ends (no batching: nothing waits for a flush)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    out = open(environ[SPANS_ENV], "a")  # noqa: SIM115 (open for the process's life)
    exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


if __name__ == "__main__":
    import service.app

    service.app.tracer_provider_from_env = file_provider  # the app factory's own provider
    sys.exit(main())
