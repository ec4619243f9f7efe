"""What a traced request went through in the engine, as OpenTelemetry spans.

A stage runs a batch of several requests' images, so each stage run is one span of its own (a
trace per batch: stage, batch size, how many requests shared it), and every traced request that
rode in it gets a child span of that stage run linked to it. The engine's threads only record
(:func:`record_stage_run`, when ``ModelEngine.tracing`` is on); the request's spans are made on
its own side once it is answered (:meth:`RequestTrace.emit`): queue wait (submit to its first
stage), each stage run, and an ``exit`` event per exit its images took.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, Tracer, get_current_span


class _Answer(Protocol):  # an ImageResult
    @property
    def exit(self) -> int: ...


class _Owner(Protocol):  # a RequestWork
    trace: RequestTrace | None


@dataclass(frozen=True)
class StageRun:
    stage: int
    start_ns: int
    end_ns: int
    batch_size: int
    batch: SpanContext


@dataclass
class RequestTrace:
    """One request's record (filled by engine threads: list appends only)."""

    tracer: Tracer
    submitted_ns: int = field(default_factory=time.time_ns)
    runs: list[StageRun] = field(default_factory=list)

    def emit(self, results: Sequence[_Answer]) -> None:
        """The request's engine spans under the current span: ``queue_wait``, one ``stage k``
        per run (linked to the batch's span); and on the current span an ``exit`` event per exit
        taken (exit, images; at the end of that stage's run)."""
        if not self.runs:
            return
        first = min(r.start_ns for r in self.runs)
        self.tracer.start_span("queue_wait", start_time=self.submitted_ns).end(end_time=first)
        last_end: dict[int, int] = {}
        for run in sorted(self.runs, key=lambda r: r.start_ns):
            span = self.tracer.start_span(
                f"stage {run.stage}",
                start_time=run.start_ns,
                links=[Link(run.batch)],
                attributes={"anytime.stage": run.stage, "anytime.batch_size": run.batch_size},
            )
            span.end(end_time=run.end_ns)
            last_end[run.stage] = run.end_ns
        current = get_current_span()
        for k, images in sorted(Counter(r.exit for r in results).items()):
            attributes = {"anytime.exit": k, "anytime.images": images}
            current.add_event("exit", attributes, timestamp=last_end.get(k))


def record_stage_run(
    model: str, stage: int, owners: Iterable[_Owner], batch_size: int, seconds: float
) -> None:
    """A stage run that just ended: its batch span, and a record in each traced owner."""
    traces = {id(w.trace): w.trace for w in owners if w.trace is not None}
    if not traces:
        return
    end = time.time_ns()
    start = end - int(seconds * 1e9)
    tracer = next(iter(traces.values())).tracer
    span = tracer.start_span(
        f"batch stage {stage}",
        context=Context(),  # a trace of its own: it serves several requests
        start_time=start,
        attributes={
            "anytime.model": model,
            "anytime.stage": stage,
            "anytime.batch_size": batch_size,
            "anytime.traced_requests": len(traces),
        },
    )
    span.end(end_time=end)
    run = StageRun(stage, start, end, batch_size, span.get_span_context())
    for trace in traces.values():
        trace.runs.append(run)
