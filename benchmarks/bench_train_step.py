"""Seconds per training step (forward + backward + AdamW) for each variant × depth.

asv times the call; the harness's synchronize inside it makes a GPU step count in full.
Seconds, never tokens/s: asv reads lower as better.
"""
from . import _common as c


class TrainStep:
    params = c.PARAMS
    param_names = c.PARAM_NAMES
    rounds = 1  # each round is a fresh interpreter (spawn); one keeps a commit's suite short
    repeat = (5, 15, 2.0)
    warmup_time = 0.2
    timer = staticmethod(c.step_clock)
    timeout = 120

    def setup(self, variant, blocks):
        c.pin_threads()
        make_optimizer, train_step, TrainConfig = c.need("train", "make_optimizer", "train_step", "TrainConfig")
        self.dev = c.device()
        c.use_clock_for(self.dev)
        self.sync = c.sync_fn(self.dev)
        cfg, self.model = c.build(variant, blocks, self.dev)
        self.x, self.y = c.fixed_batch(cfg, self.dev)
        self.tcfg = TrainConfig()
        self.opt = make_optimizer(self.model, self.tcfg)
        self.step = train_step

    def time_train_step(self, variant, blocks):
        self.step(self.model, self.opt, self.x, self.y, self.tcfg)
        self.sync(self.dev)
