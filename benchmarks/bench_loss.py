"""Validation loss (nats/token) after a fixed 20-step run on the generated corpus, variant × depth,
on a tiny shape (d_model 64, seq 64, batch 4) so that 10 training runs fit a commit's budget.

Not a quality claim (README: 20 steps is a smoke test); it is deterministic for a commit and a
machine, so any move in this line means the training path changed. The harness's own loop
(`harness.train.train`), seeded data order, AdamW and schedule.
"""
from . import _common as c

CORPUS_BYTES = 200_000  # generated corpus: machine-independent, unlike the stdlib one


def _measure(variant, blocks):
    train, TrainConfig = c.need("train", "train", "TrainConfig")
    load_corpus = c.need("data", "load_corpus")
    dev = c.device()
    corpus = load_corpus("generated", max_bytes=CORPUS_BYTES)
    _, model = c.build(variant, blocks, dev, c.LOSS_SHAPE)
    tcfg = TrainConfig(steps=c.LOSS_STEPS, batch=c.LOSS_BATCH, lr=3e-3, warmup=5, eval_every=0, eval_batches=4)
    return train(model, corpus, tcfg, seed=c.SEED, device=dev)["final_val_loss"]


class ShortRunLoss:
    params = c.PARAMS
    param_names = c.PARAM_NAMES
    unit = "nats"
    rounds = 1

    def setup_cache(self):
        c.pin_threads()
        return c.cached_grid(_measure)

    setup_cache.timeout = 300

    def track_final_val_loss(self, cache, variant, blocks):
        return c.cached(cache, variant, blocks)
