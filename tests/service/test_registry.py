"""The registry's states and swaps, on a stand-in loader (no engines): resolve, lease, drain, fail."""

from __future__ import annotations

import threading
import time
from typing import cast

import pytest

from service.engine import LoadedModel
from service.errors import ModelNotFoundError, NotReadyError
from service.repository import IndexEntry, ModelRegistry, ModelState, ServedVersion


class Loads:
    """A loader that records its calls, fails on paths containing 'bad', and can be held."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []
        self.released: list[tuple[str, int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def load(self, name: str, version: int, path: str) -> ServedVersion:
        self.calls.append((name, version, path))
        self.gate.wait(10)
        if "bad" in path:
            raise ValueError(f"{path}: checksum mismatch for weights.safetensors")
        return ServedVersion(name, version, cast(LoadedModel, object()), path)

    def release(self, served: ServedVersion) -> None:
        self.released.append((served.name, served.version))


def make(loads: Loads, stamps: dict[str, str] | None = None) -> ModelRegistry:
    stamps = stamps if stamps is not None else {}
    return ModelRegistry(loads.load, lambda p: stamps.get(p, ""), loads.release, drain_timeout_s=10)


def test_resolve_serves_the_newest_ready_version_and_names_what_is_missing() -> None:
    loads = Loads()
    reg = make(loads)
    reg.apply({"m": {1: "p1", 2: "p2"}, "n": {1: "q1"}})
    assert reg.resolve("m").version == 2 and reg.resolve("m", 1).version == 1
    assert [(e.name, e.version, e.state) for e in reg.index()] == [
        ("m", 1, ModelState.READY), ("m", 2, ModelState.READY), ("n", 1, ModelState.READY)
    ]  # fmt: skip
    with pytest.raises(ModelNotFoundError, match=r"'x' is not served here; served: \['m', 'n'\]"):
        reg.resolve("x")
    with pytest.raises(ModelNotFoundError, match=r"no version 3; versions: \[1, 2\]"):
        reg.resolve("m", 3)


def test_loading_again_is_a_no_op_and_a_changed_package_reloads() -> None:
    loads, stamps = Loads(), {"p1": "a"}
    reg = make(loads, stamps)
    reg.apply({"m": {1: "p1"}})
    first = reg.resolve("m")
    reg.apply({"m": {1: "p1"}})
    assert len(loads.calls) == 1 and reg.resolve("m") is first
    stamps["p1"] = "b"  # new files copied over the version
    reg.apply({"m": {1: "p1"}})
    assert len(loads.calls) == 2 and reg.resolve("m") is not first
    assert loads.released == [("m", 1)]  # the replaced instance


def test_a_failed_version_is_reported_and_the_serving_one_stays() -> None:
    loads = Loads()
    reg = make(loads)
    reg.apply({"m": {1: "p1"}})
    report = reg.apply({"m": {2: "bad2"}})  # latest-1 policy moved on to a broken version
    assert report.failed == {("m", 2): "bad2: checksum mismatch for weights.safetensors"}
    assert reg.resolve("m").version == 1  # still answering
    assert reg.index() == [
        IndexEntry("m", 1, ModelState.READY),
        IndexEntry("m", 2, ModelState.UNAVAILABLE, "bad2: checksum mismatch for weights.safetensors"),
    ]
    with pytest.raises(ModelNotFoundError, match="version 2 is unavailable: bad2: checksum"):
        reg.resolve("m", 2)
    reg.apply({"m": {2: "bad2"}})  # unchanged: not retried on every poll
    assert len(loads.calls) == 2
    reg.apply({"m": {2: "bad2"}}, retry={"m"})  # an explicit load request retries
    assert len(loads.calls) == 3 and reg.readiness() == {"m": True}
    reg.apply({"m": {3: "p3"}})  # a good version replaces both
    assert [(e.version, e.state) for e in reg.index()] == [(3, ModelState.READY)]
    assert loads.released == [("m", 1)]


def test_a_loading_version_takes_no_traffic() -> None:
    loads = Loads()
    reg = make(loads)
    loads.gate.clear()
    t = threading.Thread(target=reg.apply, args=({"m": {1: "p1"}},))
    t.start()
    while not loads.calls:
        time.sleep(0.01)
    with pytest.raises(NotReadyError, match="'m' has no ready version yet"):
        reg.resolve("m")
    assert reg.readiness() == {"m": False}
    loads.gate.set()
    t.join()
    assert reg.resolve("m").version == 1


def test_an_unloaded_version_drains_its_leases_before_it_stops() -> None:
    loads = Loads()
    reg = make(loads)
    reg.apply({"m": {1: "p1"}})
    with reg.lease("m") as held:
        assert held.in_flight == 1
        t = threading.Thread(target=reg.apply, args=({"m": {2: "p2"}},))
        t.start()
        while reg.resolve("m").version != 2:  # the new version serves at once
            time.sleep(0.01)
        time.sleep(0.1)
        assert loads.released == []  # the old one waits for the request it accepted
        assert [(e.version, e.state) for e in reg.index()] == [
            (1, ModelState.UNLOADING), (2, ModelState.READY)
        ]  # fmt: skip
        with pytest.raises(NotReadyError):
            reg.resolve("m", 1)  # no new request reaches a draining version
    t.join()
    assert loads.released == [("m", 1)] and held.in_flight == 0


def test_unloading_a_model_and_closing() -> None:
    loads = Loads()
    reg = make(loads)
    reg.apply({"m": {1: "p1"}, "n": {1: "q1"}})
    reg.apply({"n": {1: "q1"}})
    assert reg.names() == ["n"] and loads.released == [("m", 1)]
    reg.close()
    assert reg.index() == [] and loads.released == [("m", 1), ("n", 1)]
