"""OpenTelemetry traces, off unless the standard ``OTEL_*`` settings ask for an exporter.

``OTEL_TRACES_EXPORTER`` names it (``otlp``: OTLP over HTTP/protobuf, or gRPC when
``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` and its exporter is installed; ``console``; any exporter
installed under the ``opentelemetry_traces_exporter`` entry points); the SDK itself reads the rest
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``).
Unset, ``none``, or ``OTEL_SDK_DISABLED=true``: no provider, no instrumentation, and the request
path only tests one ``None`` (the OpenTelemetry default would export OTLP to localhost; a
model server should not send data anywhere nobody asked for).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

_OTLP = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


class TracingConfigError(ValueError):
    """``OTEL_TRACES_EXPORTER`` names an exporter that is not installed."""


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "otlp":
        protocol = environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
        )
        name = _OTLP.get(protocol or "http/protobuf", name)
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        known = sorted(e.name for e in entry_points(group="opentelemetry_traces_exporter"))
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={name!r} is not installed; installed: {known}, or 'none'"
        )
    exporter: SpanExporter = next(iter(found)).load()()
    return exporter


def tracer_provider_from_env(environ: Mapping[str, str]) -> TracerProvider | None:
    """A provider exporting to every exporter ``OTEL_TRACES_EXPORTER`` lists (comma-separated),
    or None when tracing is off (see the module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    if not names:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": "anytime"}))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
    return provider
