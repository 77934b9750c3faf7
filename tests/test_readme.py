"""The README's "Add a variant" file works as printed, and .ci/run runs the README's test command."""
import re
from pathlib import Path

import torch

from resbench import variants
from resbench.model import ModelConfig, build_model

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_add_a_variant_snippet_registers_and_runs(tmp_path, monkeypatch):
    section = README.split("## Add a variant", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "readme_rezero.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    variants.names()  # discover the package's own first, so the restored registry is complete
    monkeypatch.setattr(variants, "_REGISTRY", dict(variants._REGISTRY))
    monkeypatch.setattr(variants, "loaded_modules", list(variants.loaded_modules))  # workers must not inherit it
    variants.load_module("readme_rezero")
    assert "rezero" in variants.names()
    cfg = ModelConfig(d_model=16, n_blocks=2, n_heads=2, seq_len=8)
    model = build_model(cfg, "rezero")
    idx = torch.randint(0, 256, (2, 8))
    # alpha = 0 at init: the network is the identity, so logits = head(norm(embedding))
    ref = model.head(model.norm_f(model.embed(idx)))
    torch.testing.assert_close(model(idx), ref)
    assert model.residual.declared_extra_params() == sum(p.numel() for p in model.residual.parameters())


def test_ci_runs_the_readme_test_command():
    assert "make test" in README
    assert re.search(r"^make test\s*$", (ROOT / ".ci" / "run").read_text(), re.M)


def test_doc_tables_are_the_output_of_their_sources():
    """Every table in README.md and docs/ between <!-- NAME --> markers is re-produced by its
    command at the current code, or is its committed output file (scripts/doc_tables.py)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "doc_tables.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_no_placeholder_is_left_in_the_docs():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "@@" not in path.read_text(), f"{path.name} still has a @@placeholder@@"
