"""Corpora and seeded batches: every variant in a comparison sees the same tokens in the same order.

Corpus specs accepted by `load_corpus`:
  "stdlib"            bytes of this Python's own standard-library sources (vocab 256)
  "generated"         a deterministic synthetic byte corpus with learnable structure (vocab 256)
  "text:PATH", *.txt  bytes of a text file (vocab 256)
  "tokens:PATH", *.npy, *.bin
                      token ids: a 1-D integer .npy, or raw uint16 little-endian (.bin);
                      vocab = max id + 1
The built-in corpora are capped at max_bytes; a file the user names is used whole.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

# Directories whose sources are tests, demos or GUI code: skipped so the corpus is "library code".
_SKIP_DIRS = frozenset({
    "site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test",
    "idlelib", "turtledemo", "lib-dynload",
})
GENERATED_VERSION = 1  # bump whenever the generator's output changes: it is part of the name


@dataclass(frozen=True)
class Corpus:
    name: str
    sha256: str  # of the whole stream (bytes for byte corpora, int64-LE ids for token files)
    vocab_size: int
    train: torch.Tensor  # int64, 1-D
    val: torch.Tensor  # int64, 1-D: the contiguous tail of the stream

    @property
    def n_tokens(self) -> int:
        return int(self.train.numel() + self.val.numel())

    def describe(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "n_tokens": self.n_tokens,
                "vocab_size": self.vocab_size, "n_val": int(self.val.numel())}


# -- built-in corpora ------------------------------------------------------------------------

def _stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=4)
def _stdlib_bytes(root: str, max_bytes: int) -> bytes:
    """Sorted relative paths, so the stream is the same on every install of one Python version."""
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames
                       if d not in _SKIP_DIRS and not d.startswith(".") and not d.startswith("config-")]
        rel_dir = Path(dirpath).relative_to(root)
        rels += [(rel_dir / f).as_posix() for f in filenames if f.endswith(".py")]
    out, size = [], 0
    for rel in sorted(rels):
        try:
            data = (Path(root) / rel).read_bytes()
        except OSError:
            continue  # an unreadable file is absent on this install, as if not shipped
        out.append(data[: max_bytes - size])
        size += len(out[-1])
        if size >= max_bytes:
            break
    return b"".join(out)


def _lexicon(n_words: int) -> list[str]:
    """A fixed, seed-free lexicon: syllable words, so bytes have in-word and between-word structure."""
    onsets, vowels, codas = "bdfgklmnprstvz", "aeiou", ["", "", "n", "r", "s", "l"]
    raw = np.random.PCG64(12345).random_raw(n_words * 8).tolist()
    words, seen = [], set()
    i = 0
    while len(words) < n_words:
        n_syl = 1 + raw[i % len(raw)] % 3
        w = ""
        for k in range(n_syl):
            r = raw[(i + 1 + k) % len(raw)]
            w += onsets[r % 14] + vowels[(r >> 8) % 5] + codas[(r >> 16) % 6]
        i += 4
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


@functools.lru_cache(maxsize=4)
def _generated_bytes(max_bytes: int) -> bytes:
    """First-order Markov text over a small lexicon with sparse, skewed transitions.

    Only PCG64's raw output is used (numpy guarantees that stream; the samplers on top of it
    may change between numpy versions), so the corpus is identical everywhere."""
    n_words, fanout = 400, 6
    weights = [16, 8, 4, 2, 1, 1]  # Zipf-ish successor preferences: learnable, not deterministic
    cum = np.cumsum(weights).tolist()
    total = cum[-1]
    words = _lexicon(n_words)
    table_raw = np.random.PCG64(2024).random_raw(n_words * fanout).tolist()
    succ = [[table_raw[w * fanout + j] % n_words for j in range(fanout)] for w in range(n_words)]

    n_draws = max_bytes // 2 + 16  # words average > 4 bytes, so this always suffices
    draws = np.random.PCG64(7).random_raw(n_draws).tolist()
    parts, size, w, start = [], 0, 0, True
    for r in draws:
        pick = r % total
        j = next(k for k, c in enumerate(cum) if pick < c)
        w = succ[w][j]
        word = words[w].capitalize() if start else words[w]
        punct = (r >> 32) % 40  # sentence end ~1/8, comma ~1/20
        if punct < 5:
            tok, start = word + (".\n" if punct == 0 else ". "), True
        elif punct < 7:
            tok, start = word + ", ", False
        else:
            tok, start = word + " ", False
        parts.append(tok)
        size += len(tok)
        if size >= max_bytes:
            break
    return "".join(parts).encode("ascii")[:max_bytes]


# -- files -----------------------------------------------------------------------------------

def _read_file(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"corpus file not found: {path}") from None
    except OSError as e:
        raise UserError(f"cannot read corpus file {path}: {e.strerror or e}") from None
    if not data:
        raise UserError(f"corpus file is empty: {path}")
    return data


def _load_tokens(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        _read_file(path)  # uniform missing/empty/unreadable messages
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:  # corrupt header, pickled object array, ...
            raise UserError(f"cannot load token file {path}: {str(e).splitlines()[0]}") from None
        if not np.issubdtype(arr.dtype, np.integer):
            raise UserError(f"token file {path} holds {arr.dtype}, expected integer token ids")
        arr = arr.reshape(-1)
    else:
        data = _read_file(path)
        if len(data) % 2:
            raise UserError(f"token file {path} has an odd byte count; .bin must be uint16 little-endian")
        arr = np.frombuffer(data, dtype="<u2")
    if arr.size == 0:
        raise UserError(f"corpus file is empty: {path}")
    if arr.min() < 0:
        raise UserError(f"token file {path} holds negative token ids")
    return arr.astype(np.int64)


# -- entry point -----------------------------------------------------------------------------

def _split(name: str, sha: str, vocab: int, tokens: torch.Tensor, val_fraction: float) -> Corpus:
    n = tokens.numel()
    n_val = int(n * val_fraction)
    if n_val < 1 or n - n_val < 1:
        raise UserError(f"corpus {name} has {n} tokens: too few for a {val_fraction} validation split")
    return Corpus(name, sha, vocab, tokens[: n - n_val].clone(), tokens[n - n_val:].clone())


def _byte_corpus(name: str, data: bytes, val_fraction: float) -> Corpus:
    tokens = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64))
    return _split(name, hashlib.sha256(data).hexdigest(), 256, tokens, val_fraction)


def load_corpus(spec: str = "stdlib", max_bytes: int = 2_000_000, val_fraction: float = 0.1) -> Corpus:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise UserError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    if not (0.0 < val_fraction < 1.0):
        raise UserError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if spec == "stdlib":
        root = _stdlib_dir()
        data = _stdlib_bytes(root, max_bytes) if os.path.isdir(root) else b""
        if data:
            return _byte_corpus(f"stdlib-py{platform.python_version()}", data, val_fraction)
        spec = "generated"  # a stripped install (no sources): still a usable, deterministic corpus
    if spec == "generated":
        return _byte_corpus(f"generated-v{GENERATED_VERSION}", _generated_bytes(max_bytes), val_fraction)

    fmt, path = None, spec
    if spec.startswith("text:"):
        fmt, path = "text", spec[5:]
    elif spec.startswith("tokens:"):
        fmt, path = "tokens", spec[7:]
    elif spec.endswith((".npy", ".bin")):
        fmt = "tokens"
    elif spec.endswith(".txt") or os.path.isfile(spec):
        fmt = "text"
    if fmt is None:
        raise UserError(f"unknown corpus {spec!r}: use stdlib, generated, text:PATH, tokens:PATH "
                        "or a .txt/.npy/.bin file")
    if not path:
        raise UserError(f"corpus spec {spec!r} names no file")
    if fmt == "text":
        return _byte_corpus(f"text:{path}", _read_file(path), val_fraction)
    arr = _load_tokens(path)
    sha = hashlib.sha256(arr.astype("<i8").tobytes()).hexdigest()
    return _split(f"tokens:{path}", sha, int(arr.max()) + 1, torch.from_numpy(arr), val_fraction)


# -- batches ---------------------------------------------------------------------------------

def _check_len(tokens: torch.Tensor, seq_len: int, what: str) -> None:
    if tokens.numel() < seq_len + 1:
        raise UserError(f"{what} split has {tokens.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}")


def _batch_seed(seed: int, step: int) -> int:
    # a stable hash (Python's hash() is platform-width dependent), within torch's seed range
    h = hashlib.blake2b(f"resbench:{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def _windows(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = tokens[starts[:, None] + torch.arange(seq_len + 1)]
    return w[:, :-1], w[:, 1:]


def batch_at(tokens: torch.Tensor, step: int, batch: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch for (seed, step): random windows drawn from a private generator, so
    it depends on nothing else (not the global RNG, not what was drawn before)."""
    _check_len(tokens, seq_len, "train")
    g = torch.Generator().manual_seed(_batch_seed(seed, step))
    starts = torch.randint(0, tokens.numel() - seq_len, (batch,), generator=g)
    return _windows(tokens, starts, seq_len)


def val_batches(corpus: Corpus, batch: int, seq_len: int, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Evenly spaced windows over the val split: the same for every variant and every seed."""
    _check_len(corpus.val, seq_len, "validation")
    last = corpus.val.numel() - seq_len - 1
    starts = torch.linspace(0, last, batch * n_batches, dtype=torch.float64).round().long()
    return [_windows(corpus.val, s, seq_len) for s in starts.split(batch)]
