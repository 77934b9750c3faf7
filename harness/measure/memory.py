"""Memory counters: an exact live-tensor-bytes tracker, process RSS, CUDA allocator peaks, NVML.

Every number here is one *view* of memory; callers must label which one they report
(see docs/MEASURING.md, "Memory").
"""
from __future__ import annotations

import os
import resource
import sys
import threading
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = [
    "LiveBytesTracker",
    "rss_bytes",
    "peak_rss_bytes",
    "cuda_memory_snapshot",
    "reset_cuda_peak",
    "NvmlSampler",
]


def _storage_of(t):
    """The tensor's storage, or None for tensors without one (sparse, wrapper subclasses)."""
    try:
        return t.untyped_storage()
    except Exception:  # noqa: BLE001 - any tensor kind without a plain storage
        return None


_LIFT_OPS = (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default)


class LiveBytesTracker(TorchDispatchMode):
    """Exact peak of live tensor-storage bytes created by the code run inside it.

    Mechanism: every aten op passes through ``__torch_dispatch__``; a storage first seen as an op
    output is a new allocation (+nbytes). A weakref callback on the Python storage object says
    when it dies (-nbytes): torch keeps one Python storage object per StorageImpl for its whole
    life (PyObject preservation), so the callback fires exactly when the storage is freed,
    including storages only C++ holds (autograd's saved tensors). Views and in-place results
    share a known storage, so they add nothing.

    Relative to entry: storages alive before entering count 0. One that an op touches inside is
    watched too, and if it dies inside, ``current`` drops below 0 (``peak`` stays >= 0).
    Pre-existing storages no op touches are invisible (e.g. ``p.grad = None``).

    Checked against the profiler's CPU allocator events: a transformer train step (AdamW
    included) and a prefill agree byte for byte (tests/test_measure_memory.py).

    What it does not see: scratch memory *inside* a kernel (workspaces, temporaries below the
    dispatcher, e.g. cuBLAS/cuDNN), allocator rounding/caching, and tensors made without an aten op
    (``torch.from_numpy``, ``torch.UntypedStorage(n)``). Sizes are logical ``nbytes``; under
    ``FakeTensorMode`` that is shape x itemsize with no storage behind it. For fake tensors,
    enter the tracker *inside* the fake mode (``with FakeTensorMode(): with LiveBytesTracker():``).

    After exit: ``peak``, ``current``, ``allocated_total`` (all bytes, ints), ``freed_preexisting``.
    """

    def __init__(self):
        super().__init__()
        self.peak = 0
        self.current = 0
        self.allocated_total = 0
        self.freed_preexisting = 0
        self.n_ops = 0
        self._lock = threading.RLock()  # callbacks may fire on autograd threads or inside gc
        self._live: dict[int, list] = {}  # key -> [nbytes now, preexisting?]
        self._refs: dict[int, weakref.ref] = {}
        self._active = False

    # -- context ----------------------------------------------------------------------------
    def __enter__(self):
        with self._lock:
            self.peak = self.current = self.allocated_total = self.freed_preexisting = 0
            self.n_ops = 0
            self._live.clear()
            self._refs.clear()
            self._active = True
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            with self._lock:
                self._active = False
                # dropping the weakrefs cancels their callbacks: nothing fires after exit
                self._refs.clear()
                self._live.clear()

    # -- bookkeeping --------------------------------------------------------------------------
    def _freed(self, key: int) -> None:
        with self._lock:
            if not self._active:
                return
            entry = self._live.pop(key, None)
            self._refs.pop(key, None)
            if entry is None:
                return
            nbytes, preexisting = entry
            self.current -= nbytes
            if preexisting:
                self.freed_preexisting += nbytes

    def _watch(self, storage, preexisting: bool) -> None:
        key = storage._cdata  # the StorageImpl address: unique while it lives
        nbytes = storage.nbytes()
        entry = self._live.get(key)
        if entry is not None:
            if entry[0] != nbytes:  # resized in place (resize_, out= ops)
                delta = nbytes - entry[0]
                entry[0] = nbytes
                self.current += delta
                if delta > 0:
                    self.allocated_total += delta
            return
        ref = weakref.ref(storage, lambda _r, k=key: self._freed(k))
        self._refs[key] = ref
        self._live[key] = [nbytes, preexisting]
        if not preexisting:
            self.current += nbytes
            self.allocated_total += nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # lift_fresh hands back its input: a constant (torch.tensor(...)) built below the
        # dispatcher, so it is new here, not pre-existing.
        if func not in _LIFT_OPS:
            # inputs before the op runs: a storage we never saw was alive at entry, and its size
            # now is the baseline for ops that resize it (out=, resize_)
            with self._lock:
                for a in tree_leaves((args, kwargs)):
                    if isinstance(a, torch.Tensor) and (s := _storage_of(a)) is not None:
                        self._watch(s, preexisting=True)
        out = func(*args, **kwargs)
        with self._lock:
            self.n_ops += 1
            for o in tree_leaves(out):
                if isinstance(o, torch.Tensor) and (s := _storage_of(o)) is not None:
                    self._watch(s, preexisting=False)
            if self.current > self.peak:
                self.peak = self.current
        return out


def rss_bytes() -> int:
    """Current resident set size of this process, in bytes (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil  # only off Linux; not a dependency

        return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Peak RSS of this process so far (getrusage ru_maxrss: KiB on Linux, bytes on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = int(maxrss if sys.platform == "darwin" else maxrss * 1024)
    # the kernel updates ru_maxrss lazily; never report a peak below the current value
    return max(peak, rss_bytes())


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def cuda_memory_snapshot(device) -> dict:
    """CUDA caching-allocator peaks since the last reset; {} off CUDA."""
    if not _is_cuda(device):
        return {}
    return {
        "cuda_peak_allocated": int(torch.cuda.max_memory_allocated(device)),
        "cuda_peak_reserved": int(torch.cuda.max_memory_reserved(device)),
    }


def reset_cuda_peak(device) -> None:
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)


def _nvml_index(device) -> int:
    if isinstance(device, int):
        return device
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"not a CUDA device: {dev}")
    if torch.cuda.is_available():
        # NVML numbers GPUs physically; CUDA_VISIBLE_DEVICES renumbers them for torch
        return torch.cuda._get_nvml_device_index(dev)
    return dev.index or 0


class NvmlSampler:
    """Samples NVML "memory used" of one GPU every ``interval_s`` in a background thread.

    Device-wide: includes the CUDA context and other processes, so it is a cross-check, not the
    primary number. ``peak_bytes`` is None (and ``status`` "unavailable: <why>") whenever NVML,
    pynvml or the GPU is missing, or any sample failed; it never raises.
    """

    def __init__(self, device=0, interval_s: float = 0.005):
        self.device = device
        self.interval_s = interval_s
        self.peak_bytes: int | None = None
        self.baseline_bytes: int | None = None
        self.n_samples = 0
        self.status = "unavailable: not run"
        self._nvml = None
        self._handle = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        used = int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        self.n_samples += 1
        if self.peak_bytes is None or used > self.peak_bytes:
            self.peak_bytes = used

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._sample()
            except Exception as e:  # noqa: BLE001 - report, never raise
                self._error = f"sampling failed: {type(e).__name__}: {e}"
                return

    def __enter__(self):
        try:
            index = _nvml_index(self.device)  # a CPU run never touches NVML
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as e:  # noqa: BLE001
            self.status = f"unavailable: {type(e).__name__}: {e}"
            return self
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._sample()
            self.baseline_bytes = self.peak_bytes
        except Exception as e:  # noqa: BLE001
            self.status = f"unavailable: {type(e).__name__}: {e}"
            self.peak_bytes = None
            self._shutdown()
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is None:
            return False
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._error is None:
            try:
                self._sample()  # the last moment counts too
            except Exception as e:  # noqa: BLE001
                self._error = f"sampling failed: {type(e).__name__}: {e}"
        if self._error is None:
            self.status = "ok"
        else:  # a peak with holes in it is not a peak
            self.status = f"unavailable: {self._error}"
            self.peak_bytes = None
        self._shutdown()
        return False

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
