"""What a pipeline's stage transitions must carry, computed from the layout alone (never from the
pipeline code), in d-vectors per token for one forward pass: the AttnRes paper's Eq. 7/8 and the
exact count for a given block layout, which adds what the paper's formulas leave out.

Paper (§4.1), P ranks, V virtual stages each, C = P·V chunks, N_p blocks per chunk:
    Eq. 7  Comm_naive  = C(C-1)/2 · N_p            every transition carries every completed block
    Eq. 8  Comm_cached = P(P-1)/2 · N_p + (V-1)·P²·N_p
                                                   a rank keeps what its previous chunk started from,
                                                   so later transitions carry the P·N_p new blocks
resbench's `cached-all` also keeps what a rank's chunk produced, so a transition into chunk
c >= P carries only the blocks of the P-1 chunks since the receiver's previous one:
    Comm_cached_all = P(P-1)/2 · N_p + (V-1)·P(P-1)·N_p      (V-1)·P·N_p fewer than Eq. 8
Exact, per transition into chunk c (cut at sublayer s_c): the embedding b_0 (a source of every
reader), the blocks completed before s_c, and the current block's partial sum when s_c falls
inside a block; under caching, less the sources the receiving rank started chunk c-P from
(`cached`) or held when chunk c-P ended (`cached-all`).
"""
from __future__ import annotations


def eq7_naive(chunks: int, n_p: float) -> float:
    return chunks * (chunks - 1) / 2 * n_p


def eq8_cached(ranks: int, virtual: int, n_p: float) -> float:
    return ranks * (ranks - 1) / 2 * n_p + (virtual - 1) * ranks ** 2 * n_p


def cached_all(ranks: int, virtual: int, n_p: float) -> float:
    return ranks * (ranks - 1) / 2 * n_p + (virtual - 1) * ranks * (ranks - 1) * n_p


def paper(ranks: int, virtual: int, n_blocks: int, comm: str) -> float:
    """Eq. 7, Eq. 8, or cached-all's closed form, with N_p = N / C (the paper's 'on average')."""
    chunks = ranks * virtual
    n_p = n_blocks / chunks
    return {"naive": lambda: eq7_naive(chunks, n_p), "cached": lambda: eq8_cached(ranks, virtual, n_p),
            "cached-all": lambda: cached_all(ranks, virtual, n_p)}[comm]()


def exact(block_starts: list[int], n_layers: int, cuts: list[int], ranks: int, comm: str) -> dict:
    """d-vectors per token each forward transition carries for AttnRes with blocks starting at
    `block_starts` (sublayer indices, 0 first), the chunks starting at `cuts` (cuts[0] = 0).
    Returns {"per_transition": [...], "total", "blocks", "embedding", "partial"}: the total split
    into completed blocks (what Eq. 7/8 count), embeddings and partial sums."""
    ends = [*block_starts[1:], n_layers]

    def completed(s):  # blocks finished before sublayer s
        return sum(1 for e in ends if e <= s)

    per, blocks, emb, partial = [], 0, 0, 0
    for c in range(1, len(cuts)):
        s = cuts[c]
        b, e, p = completed(s), 1, int(s not in block_starts and s < n_layers)
        if comm != "naive" and c >= ranks:  # kept: the sources chunk c-P started from, or ended with
            b -= completed(cuts[c - ranks + (comm == "cached-all")])
            e = 0
        per.append(b + e + p)
        blocks, emb, partial = blocks + b, emb + e, partial + p
    return {"per_transition": per, "total": sum(per), "blocks": blocks, "embedding": emb, "partial": partial}
