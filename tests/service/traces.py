"""One request's spans, checked the same way whichever protocol carried it (HTTP, gRPC).

Spans are compared as the SDK writes them out (``ReadableSpan.to_json``), so that spans recorded
in this process and spans a server process wrote to a file go through one check.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

Span = dict[str, Any]


def as_records(spans: Iterable[ReadableSpan]) -> list[Span]:
    return [json.loads(s.to_json(indent=None)) for s in spans]


def children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s["parent_id"] == parent["context"]["span_id"]]


def check_request_spans(spans: list[Span], server: Span, exits: list[int]) -> None:
    """Under the ``server`` span: ``inference``, and under it decode, queue wait and one span per
    stage run (each linked to its batch's span, a trace of its own), and on it an ``exit`` event
    per exit taken (``exits``: each image's exit, as answered)."""
    by_id = {s["context"]["span_id"]: s for s in spans}
    (inference,) = [s for s in children(spans, server) if s["name"] == "inference"]
    assert inference["context"]["trace_id"] == server["context"]["trace_id"]
    below = sorted(children(spans, inference), key=lambda s: s["start_time"])
    assert [s["name"] for s in below][:2] == ["decode", "queue_wait"]
    stages = [s for s in below if s["name"].startswith("stage ")]
    assert sorted({s["name"] for s in stages}) == ["stage 0", "stage 1", "stage 2"]
    for stage in stages:
        (link,) = stage["links"]
        batch = by_id[link["context"]["span_id"]]
        assert batch["name"] == f"batch {stage['name']}" and batch["parent_id"] is None
        assert batch["attributes"]["anytime.batch_size"] == stage["attributes"]["anytime.batch_size"]
        assert (batch["start_time"], batch["end_time"]) == (stage["start_time"], stage["end_time"])
    taken = {
        e["attributes"]["anytime.exit"]: e["attributes"]["anytime.images"]
        for e in inference["events"]
        if e["name"] == "exit"
    }
    assert taken == {k: exits.count(k) for k in set(exits)}
    decode, queue = below[0], below[1]
    first_stage = min(s["start_time"] for s in stages)
    assert decode["end_time"] <= queue["start_time"] and queue["end_time"] == first_stage
