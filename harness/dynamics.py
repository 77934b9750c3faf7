"""Training dynamics, read off a trained model on a fixed batch (opt-in, one extra fwd + bwd).

- input RMS per sublayer: RMS of h_i, what sublayer i reads (PreNorm: the residual stream, which
  the paper shows growing with depth; AttnRes: a softmax mix of sources, which stays bounded);
- output RMS per sublayer: RMS of f_i(h_i);
- gradient norm per sublayer: L2 norm of the loss gradient over that sublayer's parameters;
- depth-mixing weights, when the variant exposes them (`depth_weights()`): rows = readers,
  columns = sources, averaged over tokens (AttnRes softmax weights, DenseFormer's alpha).
"""
from __future__ import annotations

import torch

from .train import lm_loss


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().float().pow(2).mean().sqrt())


def probe(model, x: torch.Tensor, y: torch.Tensor) -> dict:
    inputs, outputs = [], []

    def before(module, args):  # the input is read before the sublayer consumes it (model.take)
        h = args[0]
        inputs.append(_rms(h[0] if isinstance(h, list) else h))

    def after(module, args, out):
        outputs.append(_rms(out))

    handles = [f.register_forward_pre_hook(before) for f in model.sublayers]
    handles += [f.register_forward_hook(after) for f in model.sublayers]
    residual = model.residual
    recording = hasattr(residual, "record_weights")
    try:
        if recording:
            residual.record_weights(True)
        model.zero_grad(set_to_none=True)
        lm_loss(model, x, y).backward()
        weights = residual.depth_weights() if hasattr(residual, "depth_weights") else None
    finally:
        for h in handles:
            h.remove()
        if recording:
            residual.record_weights(False)
    grad_norms = [
        float(torch.sqrt(sum(p.grad.float().pow(2).sum() for p in f.parameters() if p.grad is not None)))
        for f in model.sublayers
    ]
    model.zero_grad(set_to_none=True)
    out = {"input_rms": inputs, "output_rms": outputs, "grad_norm": grad_norms}
    if weights is not None:
        out["depth_weights"] = weights
    return out
