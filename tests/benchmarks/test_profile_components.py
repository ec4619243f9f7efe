"""The component attribution of the request-cost profile, on hand-written py-spy stacks."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.profile import (
    COMPONENTS,
    NATIVE,
    OTHER,
    attribute,
    component_of,
    component_table,
    markdown,
    samples,
    thread_cpu,
    thread_table,
)

LOOP = (
    "Runner.run (asyncio/runners.py:118);RequestResponseCycle.run_asgi (uvicorn/protocols/http/h.py:4)"
)
ROUTE = f"{LOOP};FastAPI.__call__ (fastapi/applications.py:1);classify (service/routes/v1.py:40)"
WORKER = "Thread.run (threading.py:982);ModelEngine._worker (service/engine/engine.py:219)"
STACKS = {
    # innermost recognised frame -> component
    f"{ROUTE};decode_image (service/images.py:60);ImageFile.load (PIL/ImageFile.py:9)": "decode",
    f"{ROUTE};preprocess (service/images.py:100)": "preprocessing",
    f"{ROUTE};preprocess (service/images.py:99);Image.resize (PIL/Image.py:22)": "preprocessing",
    f"{ROUTE};Request.form (starlette/requests.py:9);parse (python_multipart/multipart.py:1)": (
        "body / multipart parse"
    ),
    f"{ROUTE};serialize_response (fastapi/routing.py:1);JSONEncoder.encode (json/encoder.py:2)": (
        "response encoding"
    ),
    f"{WORKER};run_stage (service/engine/stage.py:76);DenseConv.forward (models/msdnet.py:62)": "engine",
    f"{WORKER};ModelEngine._next_batch (service/engine/engine.py:240)": "queueing and thread hops",
    f"{ROUTE};run_in_threadpool (starlette/concurrency.py:3);to_thread (anyio/to_thread.py:1)": (
        "queueing and thread hops"
    ),
    f"{ROUTE};Histogram.observe (prometheus_client/metrics.py:1)": "metrics and logging",
    f"{ROUTE};solve_dependencies (fastapi/dependencies/utils.py:5)": "routing, middleware, validation",
    f"{LOOP};HttpToolsProtocol.data_received (uvicorn/protocols/http/httptools_impl.py:1)": (
        "connection + HTTP parse"
    ),
    "_run_module_as_main (<frozen runpy>:198);mystery (elsewhere.py:1)": OTHER,
}


@pytest.mark.parametrize(("stack", "component"), list(STACKS.items()))
def test_innermost_recognised_frame_decides(stack: str, component: str) -> None:
    assert component_of(stack.split(";")) == component


def test_every_row_of_the_table_is_reachable() -> None:
    assert {n for n, _ in COMPONENTS} <= set(STACKS.values())


def _raw(tmp_path: Path) -> Path:
    engine = f"{WORKER};run_stage (service/engine/stage.py:76);forward (torch/nn/modules/conv.py:5)"
    lines = [
        f'process 7:"python -m service";thread (11): engine-0;{engine} 30',
        f'process 7:"svc";thread (11): engine-0;{WORKER};_next_batch (service/engine/x.py:1) 10',
        f"thread (12): MainThread;{ROUTE};decode_image (service/images.py:60) 5",
        f"thread (12): MainThread;{LOOP};data_received (uvicorn/protocols/http/httptools_impl.py:1) 15",
        "thread (13): other;mystery (elsewhere.py:1) 4",
        "not a sample line",
    ]
    path = tmp_path / "raw.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_samples_carry_thread_ids(tmp_path: Path) -> None:
    got = samples(_raw(tmp_path))
    assert [(tid, n) for tid, _, _, n in got] == [(11, 30), (11, 10), (12, 5), (12, 15), (13, 4)]
    assert [name for _, name, _, _ in got[:3]] == ["thread: engine-0"] * 2 + ["thread: MainThread"]
    assert got[0][2][0].startswith("Thread.run")  # the process and thread names are not frames


def test_cpu_time_is_split_by_each_threads_samples(tmp_path: Path) -> None:
    by_thread = attribute(_raw(tmp_path))
    assert by_thread[11] == Counter({"engine": 30, "queueing and thread hops": 10})
    # Thread 11 ran 4 s, thread 12 ran 2 s, thread 14 (no Python samples) 1 s; thread 13 is
    # unknown to /proc (exited): its samples count in the shares only. 100 images answered.
    rows = {r["component"]: r for r in component_table(by_thread, {11: 4.0, 12: 2.0, 14: 1.0}, 100)}
    assert rows["engine"]["ms_per_image"] == pytest.approx(1e3 * 4.0 * 30 / 40 / 100)
    assert rows["queueing and thread hops"]["ms_per_image"] == pytest.approx(10.0)
    assert rows["decode"]["ms_per_image"] == pytest.approx(1e3 * 2.0 * 5 / 20 / 100)
    assert rows["connection + HTTP parse"]["ms_per_image"] == pytest.approx(15.0)
    assert rows[NATIVE]["ms_per_image"] == pytest.approx(10.0)
    assert rows[OTHER]["ms_per_image"] == 0.0 and rows[OTHER]["share"] == pytest.approx(4 / 64)
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
    assert list(rows)[-2:] == [OTHER, NATIVE]


def test_cpu_time_by_thread_kind_needs_no_attribution(tmp_path: Path) -> None:
    # engine-0 (11) 4 s, MainThread (12) 2 s, "other" (13) and a native thread (14) 1 s each.
    ms = thread_table(_raw(tmp_path), {11: 4.0, 12: 2.0, 13: 1.0, 14: 1.0}, 100)
    assert ms == pytest.approx({"event loop": 20.0, "engine": 40.0, "other": 20.0})


def test_thread_cpu_reads_this_process() -> None:
    cpu = thread_cpu([os.getpid()])
    assert threading.get_native_id() in cpu and all(v >= 0 for v in cpu.values())


def test_markdown_lists_every_row_and_the_total() -> None:
    prof = {
        "rows": [{"component": "engine", "ms_per_image": 5.0, "share": 0.5}],
        "cpu_ms_per_image": 9.0,
    }
    text = "\n".join(markdown(prof))
    assert "| engine | 5.00 | 50.0% |" in text and "**9.00**" in text
