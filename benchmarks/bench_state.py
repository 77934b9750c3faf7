"""Residual-state bytes per token: what a variant keeps alive across depth, variant × depth.

measured: the variant's begin/read/write over all L sublayers on random tensors (no sublayers,
no grad) under the harness's LiveBytesTracker; the bytes still alive at the end, held by the
state, divided by the tokens. declared: the variant's own `state_vectors()` × d_model × 4 bytes.
The two should agree; a change in either is a change in what the variant costs.
"""
from . import _common as c


def _measured(variant, blocks):
    import torch

    LiveBytesTracker = c.need("measure", "LiveBytesTracker")
    cfg, model = c.build(variant, blocks, "cpu")
    res = model.residual
    g = torch.Generator().manual_seed(c.SEED)
    shape = (c.BATCH, cfg.seq_len, cfg.d_model)  # the quick suite's shape
    with torch.no_grad(), LiveBytesTracker() as tracker:
        # every tensor is made inside the tracker, so whatever survives is held by the state
        state = res.begin(torch.randn(shape, generator=g))
        for i in range(cfg.n_layers):
            res.read(state, i)
            state = res.write(state, i, torch.randn(shape, generator=g))
    alive = tracker.current
    del state
    return alive / (c.BATCH * cfg.seq_len)


def _declared(variant, blocks):
    cfg, model = c.build(variant, blocks, "cpu")
    return model.residual.state_vectors() * cfg.d_model * 4  # float32


class StateBytes:
    params = c.PARAMS
    param_names = c.PARAM_NAMES
    unit = "bytes"
    rounds = 1

    def setup_cache(self):
        return c.cached_grid(_measured)

    def track_state_bytes_per_token(self, cache, variant, blocks):
        return c.cached(cache, variant, blocks)


class DeclaredStateBytes:
    params = c.PARAMS
    param_names = c.PARAM_NAMES
    unit = "bytes"
    rounds = 1

    def setup_cache(self):
        return c.cached_grid(_declared)

    def track_declared_state_bytes_per_token(self, cache, variant, blocks):
        return c.cached(cache, variant, blocks)
