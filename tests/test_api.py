"""docs/API.md runs as written: its Python blocks, in order, in one namespace, in a scratch folder."""
import re
from pathlib import Path

from resbench import variants

ROOT = Path(__file__).resolve().parent.parent


def test_the_api_page_runs_as_written(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "API.md").read_text(), re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    variants.names()
    monkeypatch.setattr(variants, "_REGISTRY", dict(variants._REGISTRY))  # half-mix stays in this test
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, "docs/API.md", "exec"), namespace)  # noqa: S102 - the page is this repository's
    assert (tmp_path / "results" / "api-demo.jsonl").is_file()
    assert "half-mix" in variants.names()
