"""Latency measurement: how sessions take turns (timing itself is for benchmarks)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from edgeq.runtime import ort


class FakeSession:
    """Takes ``cost`` seconds of a fake clock per run and logs its runs."""

    def __init__(self, name: str, cost: float, clock: list[float], log: list[str]) -> None:
        self.name, self.cost, self.clock, self.log = name, cost, clock, log

    def get_inputs(self):
        return [types.SimpleNamespace(name="input")]

    def run(self, _outputs, feeds):
        assert set(feeds) == {"input"}
        self.clock[0] += self.cost
        self.log.append(self.name)


@pytest.fixture
def fake_time(monkeypatch):
    clock, log = [0.0], []
    monkeypatch.setattr(ort.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(ort.time, "sleep", lambda s: log.append(f"pause {s}"))
    return clock, log


def test_sessions_take_turns_in_bursts_after_a_pause(fake_time):
    clock, log = fake_time
    sessions = {"a": FakeSession("a", 1.0, clock, log), "b": FakeSession("b", 3.0, clock, log)}
    got = ort.measure_latency(sessions, np.zeros(1), rounds=7, warmup=1, burst=5, pause=0.05)
    assert got == {"a": 1.0, "b": 3.0}
    turn_a = ["pause 0.05"] + ["a"] * (2 + 5)  # two untimed runs, then the burst
    turn_b = ["pause 0.05"] + ["b"] * (2 + 5)
    last_a = ["pause 0.05"] + ["a"] * (2 + 2)  # the remaining 2 of 7 timed runs
    last_b = ["pause 0.05"] + ["b"] * (2 + 2)
    assert log == ["a", "b", *turn_a, *turn_b, *last_a, *last_b]
