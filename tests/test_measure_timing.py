"""Timing: interleaving order, the CUDA event path (faked), summaries."""
import contextlib
import time

import pytest
import torch

from resbench.measure import summarize, synchronize, time_interleaved, time_once


def recorder(log, name):
    return lambda: log.append(name)


def test_interleaved_and_rotated():
    log, steps = [], []
    fns = {n: recorder(log, n) for n in "ABC"}
    out = time_interleaved(fns, "cpu", warmup=1, repeats=4, progress=steps.append)
    assert log == list("ABC" + "ABC" + "BCA" + "CAB" + "ABC")
    assert {k: len(v) for k, v in out.items()} == {"A": 4, "B": 4, "C": 4}
    assert all(s >= 0 for v in out.values() for s in v)
    assert steps == [1] * 15  # tqdm.update-style: one per call, warm-up included
    assert list(out) == ["A", "B", "C"]


def test_interleaved_edge_cases():
    assert time_interleaved({}, "cpu", 2, 3) == {}
    assert time_interleaved({"A": lambda: None}, "cpu", 0, 0) == {"A": []}
    with pytest.raises(ValueError):
        time_interleaved({"A": lambda: None}, "cpu", -1, 1)


def test_time_once_cpu_measures_the_call():
    assert time_once(lambda: time.sleep(0.02), "cpu") >= 0.02


def test_synchronize_cpu_is_noop(monkeypatch):
    def boom(*a):
        raise AssertionError("cuda synchronize on cpu")

    monkeypatch.setattr(torch.cuda, "synchronize", boom)
    synchronize("cpu")
    synchronize(torch.device("cpu"))


class FakeCuda:
    """Fake torch.cuda.Event / synchronize that log the order of everything."""

    def __init__(self, elapsed_ms=250.0):
        self.log = []
        self.elapsed_ms = elapsed_ms
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.recorded = False
                self.done = False

            def record(self, stream=None):
                self.recorded = True
                fake.log.append("record")
                fake.pending.append(self)

            def elapsed_time(self, end):
                # only valid after a sync has completed the end event
                assert self.done and end.done, "elapsed_time read before synchronize"
                fake.log.append("elapsed")
                return fake.elapsed_ms

        self.Event = Event
        self.pending = []

    def synchronize(self, device=None):
        self.log.append("sync")
        for e in self.pending:
            e.done = True
        self.pending.clear()


@pytest.fixture
def fake_cuda(monkeypatch):
    fake = FakeCuda()
    monkeypatch.setattr(torch.cuda, "Event", fake.Event)
    monkeypatch.setattr(torch.cuda, "synchronize", fake.synchronize)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    return fake


def test_time_once_cuda_uses_events_and_syncs(fake_cuda):
    seconds = time_once(lambda: fake_cuda.log.append("fn"), "cuda")
    assert seconds == pytest.approx(0.25)
    assert fake_cuda.log == ["sync", "record", "fn", "record", "sync", "elapsed"]


def test_time_once_cuda_indexed_device(fake_cuda):
    assert time_once(lambda: None, "cuda:1") == pytest.approx(0.25)
    assert fake_cuda.log[-1] == "elapsed"


def test_time_interleaved_cuda(fake_cuda):
    out = time_interleaved({"A": lambda: None, "B": lambda: None}, torch.device("cuda"), 1, 2)
    assert out == {"A": [0.25, 0.25], "B": [0.25, 0.25]}
    assert fake_cuda.log.count("elapsed") == 4


def test_summarize():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s == {"median": 3.0, "min": 1.0, "max": 5.0, "q1": 2.0, "q3": 4.0, "mean": 3.0, "n": 5}
    assert summarize([7.0])["median"] == 7.0
    with pytest.raises(ValueError):
        summarize([])
