"""Seconds per decode token: one forward of one new token per sequence against a KV cache filled
with a prompt of half the sequence, variant × depth."""
from . import _common as c


class Decode:
    params = c.PARAMS
    param_names = c.PARAM_NAMES
    rounds = 1  # see bench_train_step
    repeat = (10, 30, 2.0)
    warmup_time = 0.2
    timer = staticmethod(c.step_clock)
    timeout = 120

    def setup(self, variant, blocks):
        import torch

        KVCache = c.need("model", "KVCache")  # commits before incremental decoding: skipped
        c.pin_threads()
        self.dev = c.device()
        c.use_clock_for(self.dev)
        self.sync = c.sync_fn(self.dev)
        cfg, self.model = c.build(variant, blocks, self.dev)
        x, _ = c.fixed_batch(cfg, self.dev)
        self.prompt = cfg.seq_len // 2
        self.cache = KVCache(cfg, x.shape[0], cfg.seq_len, device=self.dev)
        with torch.no_grad():
            self.model.prefill(x[:, :self.prompt], self.cache)
        self.token = x[:, self.prompt:self.prompt + 1]
        self.no_grad = torch.no_grad

    def time_decode_token(self, variant, blocks):
        self.cache.length = self.prompt  # every call decodes the same position
        with self.no_grad():
            self.model(self.token, cache=self.cache, last_only=True)
        self.sync(self.dev)
