"""Train / prefill / decode speed of every variant relative to PreNorm, measured interleaved.

One setup_cache process builds all variants at a depth and times each workload with the
harness's `time_interleaved` (round r starts at variant r mod 5, so drift and order effects fall
on all alike). A round's ratio is the variant's time over PreNorm's in the same round; the series
is the median of those paired ratios, which a busy neighbour moves little (it slows both sides).
On CPU each call is clocked in process CPU time at one thread; on a GPU, synchronised wall time.

The absolute medians are kept too, as ms per train step / prefill / decode token: they depend on
the machine and its load, so read them, but gate on the ratios.
"""
from . import _common as c

WORKLOADS = ("train", "prefill", "decode")
ROUNDS = {"train": 11, "prefill": 17, "decode": 17}
WARMUP = 2
DECODE_TOKENS = 16  # one timed call decodes this many tokens after a half-sequence prompt


def _fns(variant: str, blocks: int, dev: str) -> dict:
    """{workload: zero-arg callable, or the reason this commit cannot run it}."""
    import torch

    make_optimizer, train_step, TrainConfig = c.need("train", "make_optimizer", "train_step", "TrainConfig")
    cfg, model = c.build(variant, blocks, dev)
    x, y = c.fixed_batch(cfg, dev)
    tcfg = TrainConfig()
    opt = make_optimizer(model, tcfg)

    def prefill():
        with torch.no_grad():
            model(x)

    fns = {"train": lambda: train_step(model, opt, x, y, tcfg), "prefill": prefill}
    try:
        KVCache = c.need("model", "KVCache")
        cache = KVCache(cfg, x.shape[0], cfg.seq_len, device=dev)
        prompt = cfg.seq_len // 2
        model.prefill(x[:, :prompt], cache)

        def decode():
            cache.length = prompt  # every call decodes the same positions
            with torch.no_grad():
                for i in range(prompt, prompt + DECODE_TOKENS):
                    model(x[:, i:i + 1], cache=cache, last_only=True)

        decode()  # an API mismatch in an old commit surfaces here, not mid-timing
        fns["decode"] = decode
    except (NotImplementedError, AttributeError, TypeError) as exc:
        fns["decode"] = f"decode not measurable in this commit: {exc}"
    return fns


def _clocked(fn, sink: list):
    import time

    def call():
        t0 = time.process_time()
        fn()
        sink.append(time.process_time() - t0)
    return call


def measure() -> dict:
    """{workload: {"variant/blocks": {"ratio": median paired ratio, "ms": median ms} or reason}}."""
    import statistics

    time_interleaved = c.need("measure", "time_interleaved")
    c.pin_threads()
    dev = c.device()
    out = {w: {} for w in WORKLOADS}
    for blocks in c.DEPTHS:
        fns = {v: _fns(v, blocks, dev) for v in c.VARIANTS}
        for work in WORKLOADS:
            group = {v: f[work] for v, f in fns.items() if callable(f[work])}
            cpu = {v: [] for v in group}
            wall = time_interleaved({v: _clocked(f, cpu[v]) for v, f in group.items()}, dev,
                                    warmup=WARMUP, repeats=ROUNDS[work])
            # process CPU time is blind to GPU work: there the synchronised wall samples count
            samples = {v: cpu[v][WARMUP:] if dev == "cpu" else wall[v] for v in group}
            per = DECODE_TOKENS if work == "decode" else 1
            for v in c.VARIANTS:
                key = f"{v}/{blocks}"
                if v not in group or c.BASELINE not in group:
                    out[work][key] = fns[v][work] if v not in group else fns[c.BASELINE][work]
                    continue
                pairs = [a / b for a, b in zip(samples[v], samples[c.BASELINE])]
                out[work][key] = {"ratio": statistics.median(pairs),
                                  "ms": 1e3 * statistics.median(samples[v]) / per}
    return out


class _Speed:
    """Shares one setup_cache (asv keys it by the function's source line) between the classes."""
    rounds = 1
    timeout = 60

    def setup_cache(self):
        return measure()

    setup_cache.timeout = 900


class SpeedVsPreNorm(_Speed):
    params = c.RATIO_PARAMS
    param_names = c.PARAM_NAMES
    unit = "x PreNorm"

    def track_train_ratio(self, cache, variant, blocks):
        return c.cached(cache["train"], variant, blocks, "ratio")

    def track_prefill_ratio(self, cache, variant, blocks):
        return c.cached(cache["prefill"], variant, blocks, "ratio")

    def track_decode_ratio(self, cache, variant, blocks):
        return c.cached(cache["decode"], variant, blocks, "ratio")


class CpuTime(_Speed):
    """Machine-dependent: CPU ms on CPU (wall ms on a GPU) per train step, prefill, decode token."""
    params = c.PARAMS
    param_names = c.PARAM_NAMES
    unit = "ms (machine-dependent)"

    def track_train_ms(self, cache, variant, blocks):
        return c.cached(cache["train"], variant, blocks, "ms")

    def track_prefill_ms(self, cache, variant, blocks):
        return c.cached(cache["prefill"], variant, blocks, "ms")

    def track_decode_token_ms(self, cache, variant, blocks):
        return c.cached(cache["decode"], variant, blocks, "ms")
