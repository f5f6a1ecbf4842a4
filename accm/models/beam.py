"""Length-normalised beam search (ClipCap's ``generate_beam``), in numpy, with a KV-cached step.

One implementation serves the PyTorch reference and the torch-free runtime: the model side is a
``step(tokens, parents)`` callback that reorders its cache rows by ``parents`` and feeds one
token per row. Ties between equal scores go to the lower flat index (stable sort), so both
backends pick the same beams from the same logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass
class Beam:
    tokens: list[int]
    score: float  # sum of log-probabilities / length


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _top(flat: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m largest entries per row, ties to the lower index."""
    return np.argsort(-flat, axis=-1, kind="stable")[:, :m]


def beam_search(first_logits: np.ndarray, step: Callable[[np.ndarray, np.ndarray], np.ndarray],
                beams: int, max_tokens: int, stop_ids: set[int], pad_id: int) -> list[list[Beam]]:
    """``first_logits`` ``[B, V]`` (after the prompt); returns ``beams`` beams per row, best first.

    ``step(tokens [B*M], parents [B*M]) -> logits [B*M, V]``: ``parents`` index the rows of the
    previous call (``[B]`` rows before the first step, ``[B*M]`` after).
    """
    bsz, vocab = first_logits.shape
    m = beams
    logp = log_softmax(first_logits)  # [B, V]
    choice = _top(logp, m)  # [B, M]
    scores = np.take_along_axis(logp, choice, 1)  # [B, M]
    tokens = choice.copy()
    seqs = tokens[..., None].astype(np.int64)  # [B, M, t]
    lengths = np.ones((bsz, m))
    finished = np.isin(tokens, list(stop_ids))
    parents = np.repeat(np.arange(bsz), m)
    for _ in range(max_tokens - 1):
        if finished.all():
            break
        logits = step(tokens.reshape(-1), parents).reshape(bsz, m, vocab)
        logp = log_softmax(logits)
        logp[finished] = -np.inf
        logp[finished, pad_id] = 0.0
        lengths = np.where(finished, lengths, lengths + 1)
        total = scores[..., None] + logp  # [B, M, V]
        average = (total / lengths[..., None]).reshape(bsz, m * vocab)
        pick = _top(average, m)  # [B, M] flat indices
        src, tok = pick // vocab, pick % vocab
        scores = np.take_along_axis(total.reshape(bsz, -1), pick, 1)
        lengths = np.take_along_axis(lengths, src, 1)
        was_done = np.take_along_axis(finished, src, 1)
        seqs = np.concatenate([np.take_along_axis(seqs, src[..., None], 1), tok[..., None]], axis=2)
        finished = was_done | np.isin(tok, list(stop_ids))
        tokens = tok
        parents = (np.arange(bsz)[:, None] * m + src).reshape(-1)
    out = []
    for b in range(bsz):
        order = np.argsort(-(scores[b] / lengths[b]), kind="stable")
        row = []
        for j in order:
            seq = [int(t) for t in seqs[b, j]]
            cut = next((i + 1 for i, t in enumerate(seq) if t in stop_ids), len(seq))
            row.append(Beam(seq[:cut], float(scores[b, j] / lengths[b, j])))
        out.append(row)
    return out
