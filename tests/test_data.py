import hashlib

import numpy as np
import pytest
import torch

from resbench import data
from resbench.data import batch_at, load_corpus, val_batches
from resbench.errors import UserError


def _byte_entropy(c) -> float:
    counts = np.bincount(torch.cat([c.train, c.val]).numpy(), minlength=256)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _one_line_error(excinfo, needle: str):
    msg = str(excinfo.value)
    assert needle in msg and "\n" not in msg


# -- built-in corpora ------------------------------------------------------------------------

def test_stdlib_corpus_is_deterministic_and_sized():
    a = load_corpus("stdlib", max_bytes=300_000)
    data._stdlib_bytes.cache_clear()  # force a second read from disk
    b = load_corpus("stdlib", max_bytes=300_000)
    assert a.sha256 == b.sha256 and a.name == b.name
    assert a.name.startswith("stdlib-py")
    assert a.n_tokens == 300_000 and a.vocab_size == 256
    assert a.train.dtype == torch.int64 and a.train.dim() == 1
    assert a.describe() | {} == {"name": a.name, "sha256": a.sha256, "n_tokens": 300_000,
                                 "vocab_size": 256, "n_val": a.val.numel()}


def test_stdlib_val_split_is_the_held_out_tail():
    c = load_corpus("stdlib", max_bytes=100_000, val_fraction=0.1)
    stream = data._stdlib_bytes(data._stdlib_dir(), 100_000)
    full = torch.tensor(list(stream), dtype=torch.int64)
    assert c.val.numel() == 10_000 and c.train.numel() == 90_000
    assert torch.equal(c.train, full[:90_000]) and torch.equal(c.val, full[90_000:])
    assert hashlib.sha256(stream).hexdigest() == c.sha256
    # held out: the splits are separate storage, and mutating one cannot touch the other
    assert c.train.untyped_storage().data_ptr() != c.val.untyped_storage().data_ptr()


def test_stdlib_falls_back_to_generated_when_sources_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "_stdlib_dir", lambda: str(tmp_path / "no-such-stdlib"))
    c = load_corpus("stdlib", max_bytes=50_000)
    assert c.name.startswith("generated")
    assert c.sha256 == load_corpus("generated", max_bytes=50_000).sha256


def test_generated_is_deterministic_and_structured():
    a = load_corpus("generated", max_bytes=200_000)
    data._generated_bytes.cache_clear()
    b = load_corpus("generated", max_bytes=200_000)
    assert a.sha256 == b.sha256 and a.n_tokens == 200_000
    assert _byte_entropy(a) < 5.0  # uniform noise would be 8 bits/byte: nothing to learn
    assert bytes(a.train[:2000].tolist()).isascii()


# -- files -----------------------------------------------------------------------------------

def test_text_file(tmp_path):
    raw = ("hello residual world\n" * 50).encode()
    path = tmp_path / "corpus.txt"
    path.write_bytes(raw)
    for spec in (str(path), f"text:{path}"):
        c = load_corpus(spec, val_fraction=0.2)
        assert c.sha256 == hashlib.sha256(raw).hexdigest() and c.vocab_size == 256
        assert bytes(torch.cat([c.train, c.val]).tolist()) == raw
        assert c.val.numel() == int(len(raw) * 0.2)
        assert str(path) in c.name


def test_token_files_npy_and_bin(tmp_path):
    ids = np.arange(5000, dtype=np.int32) % 1000
    npy = tmp_path / "toks.npy"
    np.save(npy, ids)
    binf = tmp_path / "toks.bin"
    ids_bin = (np.arange(4000) * 17 % 65536).astype("<u2")
    ids_bin[7] = 65535
    binf.write_bytes(ids_bin.tobytes())

    for spec in (str(npy), f"tokens:{npy}"):
        c = load_corpus(spec)
        assert c.vocab_size == 1000 and c.n_tokens == 5000
        assert torch.equal(torch.cat([c.train, c.val]), torch.from_numpy(ids.astype(np.int64)))
    a, b = load_corpus(str(npy)), load_corpus(f"tokens:{npy}")
    assert a.sha256 == b.sha256

    c = load_corpus(str(binf))
    assert c.vocab_size == 65536 and c.train.dtype == torch.int64
    assert torch.equal(torch.cat([c.train, c.val]), torch.from_numpy(ids_bin.astype(np.int64)))


@pytest.mark.parametrize("spec_fmt", ["{p}.txt", "text:{p}.txt", "{p}.npy", "tokens:{p}.bin", "{p}.bin"])
def test_missing_file_is_a_one_line_user_error(tmp_path, spec_fmt):
    p = str(tmp_path / "nope")
    spec = spec_fmt.format(p=p)
    with pytest.raises(UserError) as e:
        load_corpus(spec)
    _one_line_error(e, p)


def test_bad_files_are_user_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(UserError) as e:
        load_corpus(str(empty))
    _one_line_error(e, str(empty))

    floats = tmp_path / "f.npy"
    np.save(floats, np.ones(100, dtype=np.float32))
    with pytest.raises(UserError) as e:
        load_corpus(str(floats))
    _one_line_error(e, str(floats))

    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x02\x03")
    with pytest.raises(UserError) as e:
        load_corpus(str(odd))
    _one_line_error(e, str(odd))

    with pytest.raises(UserError) as e:
        load_corpus(f"text:{tmp_path}")  # a directory
    _one_line_error(e, str(tmp_path))

    with pytest.raises(UserError) as e:
        load_corpus("stdlb")
    _one_line_error(e, "stdlb")
    with pytest.raises(UserError):
        load_corpus("generated", val_fraction=1.0)


# -- batches ---------------------------------------------------------------------------------

TOKENS = torch.arange(10_000, dtype=torch.int64)


def test_batch_at_shape_and_shift():
    x, y = batch_at(TOKENS, step=3, batch=5, seq_len=16, seed=0)
    assert x.shape == y.shape == (5, 16) and x.dtype == torch.int64
    assert torch.equal(y, x + 1)  # on arange tokens: windows are contiguous, y is x shifted by one
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert int(y.max()) < TOKENS.numel()


def test_batch_at_depends_only_on_seed_and_step():
    ref = batch_at(TOKENS, 7, 4, 16, seed=1)
    torch.manual_seed(123)  # the global RNG must not matter
    torch.rand(10)
    for s in range(5):  # nor what was drawn before
        batch_at(TOKENS, s, 4, 16, seed=9)
    again = batch_at(TOKENS, 7, 4, 16, seed=1)
    assert torch.equal(ref[0], again[0]) and torch.equal(ref[1], again[1])
    assert not torch.equal(ref[0], batch_at(TOKENS, 8, 4, 16, seed=1)[0])
    assert not torch.equal(ref[0], batch_at(TOKENS, 7, 4, 16, seed=2)[0])


def test_batch_at_too_short_split():
    with pytest.raises(UserError):
        batch_at(TOKENS[:10], 0, 2, seq_len=16, seed=0)


def test_val_batches_fixed_and_cover_val():
    c = load_corpus("generated", max_bytes=20_000)
    a = val_batches(c, batch=4, seq_len=32, n_batches=3)
    b = val_batches(c, batch=4, seq_len=32, n_batches=3)
    assert len(a) == 3 and all(x.shape == (4, 32) for x, _ in a)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert torch.equal(a[0][0][0], c.val[:32])  # evenly spaced: first window at the start ...
    assert torch.equal(a[-1][1][-1], c.val[-32:])  # ... last one ends at the split's end
    for x, y in a:
        assert torch.equal(x[:, 1:], y[:, :-1])
