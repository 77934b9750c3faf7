"""`impl: fla` (flash-linear-attention's fused AttnRes kernel) against the equations, on the CPU
through Triton's interpreter (tests/fla_interpreted.py, in a process of its own), and its
refusals where the kernel cannot run."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from resbench import variants

HERE = Path(__file__).resolve().parent
HAS_FLA = importlib.util.find_spec("fla") is not None and importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not HAS_FLA, reason="needs flash-linear-attention's kernels and triton: pip install "
                                        "'resbench[fla]' (.ci/run does)")
def test_fla_reads_equal_the_equations_forward_and_backward():
    done = subprocess.run([sys.executable, str(HERE / "fla_interpreted.py")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cases = [json.loads(line) for line in done.stdout.splitlines()]
    assert [c["variant"] for c in cases] == ["full-attnres", "block-attnres"]
    for c in cases:
        assert c["kernel_calls"] == c["reads"] and c["reference_calls"] == 0, c  # every read by the kernel
        assert c["grads"] and c["loss_rel_err"] < 1e-6 and c["grad_rel_err"] < 1e-4, c


@pytest.mark.skipif(not HAS_FLA, reason="needs flash-linear-attention's kernels: pip install 'resbench[fla]'")
def test_on_cpu_tensors_without_the_interpreter_the_cell_fails_with_flas_reason():
    import torch

    from resbench.model import ModelConfig, build_model

    cfg = ModelConfig(vocab_size=64, d_model=32, depth=2, n_heads=2, seq_len=8)
    model = build_model(cfg, "full-attnres", {"impl": "fla"}, 0)
    with pytest.raises(Exception, match="CUDA"):
        model(torch.zeros(1, 8, dtype=torch.long))


def test_without_fla_the_option_is_one_line(monkeypatch):
    from resbench.variants import _attnres_fla

    monkeypatch.setattr(_attnres_fla, "available", lambda: "impl: fla needs flash-linear-attention's kernels: "
                                                           "pip install 'resbench[fla]'")
    with pytest.raises(variants.base.VariantError, match=r"pip install 'resbench\[fla\]'"):
        variants.build("block-attnres", 32, 4, {"impl": "fla", "n_blocks": 2})


def test_fla_refuses_the_ablations_like_every_form_but_the_equations():
    if not HAS_FLA:
        pytest.skip("needs flash-linear-attention's kernels: pip install 'resbench[fla]'")
    with pytest.raises(variants.base.VariantError, match="impl: reference"):
        variants.build("full-attnres", 32, 4, {"impl": "fla", "sigmoid": True})
