"""Seconds per inference prefill (no-grad forward of the whole sequence), variant × depth."""
from . import _common as c


class Prefill:
    params = c.PARAMS
    param_names = c.PARAM_NAMES
    rounds = 1  # see bench_train_step
    repeat = (5, 15, 2.0)
    warmup_time = 0.2
    timer = staticmethod(c.step_clock)
    timeout = 120

    def setup(self, variant, blocks):
        import torch

        c.pin_threads()
        self.dev = c.device()
        c.use_clock_for(self.dev)
        self.sync = c.sync_fn(self.dev)
        cfg, self.model = c.build(variant, blocks, self.dev)
        self.x, _ = c.fixed_batch(cfg, self.dev)
        self.no_grad = torch.no_grad

    def time_prefill(self, variant, blocks):
        with self.no_grad():
            self.model(self.x)
        self.sync(self.dev)
