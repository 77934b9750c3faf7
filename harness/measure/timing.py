"""Wall-clock timing: synchronized on accelerators, interleaved across variants to cancel drift."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

__all__ = ["synchronize", "time_once", "time_interleaved", "summarize"]


def _device(device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def synchronize(device) -> None:
    """Wait for queued kernels; a no-op on CPU."""
    dev = _device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def time_once(fn: Callable[[], object], device) -> float:
    """Seconds one call of ``fn`` takes, measured on the device's own clock where it has one."""
    dev = _device(device)
    if dev.type == "cuda":
        if dev.index is not None:
            with torch.cuda.device(dev):
                return _time_cuda(fn, dev)
        return _time_cuda(fn, dev)
    synchronize(dev)
    t0 = time.perf_counter()
    fn()
    synchronize(dev)
    return time.perf_counter() - t0


def _time_cuda(fn, dev) -> float:
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    synchronize(dev)  # earlier work must not bleed into this interval
    start.record()
    fn()
    end.record()
    synchronize(dev)  # elapsed_time is only valid once `end` has completed
    return start.elapsed_time(end) / 1000.0  # ms -> s


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device,
    warmup: int,
    repeats: int,
    progress: Callable[[int], object] | None = None,
    on_error: Callable[[str, Exception], object] | None = None,
    stop: Callable[[int, dict[str, list[float]]], bool] | None = None,
    before: Callable[[str], object] | None = None,
) -> dict[str, list[float]]:
    """Time each fn ``repeats`` times, interleaved: round r calls every fn once, starting at
    fn ``r % len(fns)`` (A B C, B C A, C A B, ...) so slow drift and order effects (caches,
    turbo, a noisy neighbour) fall on every variant alike. ``warmup`` untimed rounds come first.

    ``progress(1)`` is called after every call, warm-up included (tqdm's ``update`` fits):
    ``len(fns) * (warmup + repeats)`` in all.

    With ``on_error``, a fn that raises is reported as ``on_error(name, exc)`` and leaves the
    rotation; the others go on (one failing variant must not take its group down). Without it,
    the exception propagates.

    With ``stop``, ``stop(rounds_done, samples)`` is asked after every timed round and ends the
    rounds early when it says so (adaptive rounds: ``repeats`` is then the most there may be).

    ``before(name)`` runs before every call, outside its timing (distributed ranks meet at a
    barrier there, so every rank starts the call together).
    """
    if warmup < 0 or repeats < 0:
        raise ValueError(f"warmup and repeats must be >= 0, got {warmup}, {repeats}")
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    live = list(names)

    def call(name, timed: bool) -> None:
        if before is not None:
            before(name)
        try:
            if timed:
                samples[name].append(time_once(fns[name], device))
            else:
                fns[name]()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - handed to on_error
            if on_error is None:
                raise
            live.remove(name)
            on_error(name, exc)
        if progress is not None:
            progress(1)

    for _ in range(warmup):
        for name in list(live):
            call(name, timed=False)
    synchronize(device)
    for r in range(repeats):
        if not live:
            break
        k = r % len(live)
        for name in live[k:] + live[:k]:
            call(name, timed=True)
        if stop is not None and stop(r + 1, samples):
            break
    return samples


def summarize(samples: list[float]) -> dict:
    """Median and spread of timing samples (seconds in, seconds out)."""
    if len(samples) == 0:
        raise ValueError("summarize() needs at least one sample")
    a = np.asarray(samples, dtype=np.float64)
    q1, median, q3 = np.percentile(a, [25, 50, 75])
    return {
        "median": float(median),
        "min": float(a.min()),
        "max": float(a.max()),
        "q1": float(q1),
        "q3": float(q3),
        "mean": float(a.mean()),
        "n": int(a.size),
    }
