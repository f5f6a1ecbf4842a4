"""Torch-free text helpers shared by the PyTorch reference and the runtime."""

from __future__ import annotations

import numpy as np

#: the selector's input text for one candidate: ACCM's format ("paper"), or the question and the
#: caption alone ("compact"; the paper's fixed words cost 26 of a ~40-token text in a small BPE vocab,
#: and the frozen encoder reads every candidate, so they were most of the selector's FLOPs)
SELECTOR_FORMATS = {"paper": "Question: {question}  Supplemental information for questions: {caption}",
                    "compact": "{question} {caption}"}


def selector_text(question: str, caption: str, text_format: str = "paper") -> str:
    return SELECTOR_FORMATS[text_format].format(question=question, caption=caption)


def pad_right(rows: list[list[int]], length: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(rows), length), pad, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def selector_batch(encode, questions: list[str], candidates: list[list[str]], max_tokens: int, pad: int,
                   text_format: str = "paper"):
    """``[B, M, T]`` ids and mask of the selector texts; ``encode(text) -> ids`` (with BOS)."""
    rows = [encode(selector_text(q, c, text_format))[:max_tokens]
            for q, cands in zip(questions, candidates) for c in cands]
    length = max(len(r) for r in rows)
    ids, mask = pad_right(rows, length, pad)
    m = len(candidates[0])
    return ids.reshape(len(questions), m, length), mask.reshape(len(questions), m, length)


def pick(probs: np.ndarray) -> list[int]:
    """argmax per row, ties to the lower index."""
    return [int(np.argsort(-p, kind="stable")[0]) for p in probs]
