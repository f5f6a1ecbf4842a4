"""Token selection: the one rule every pruning site, backend and kernel must reproduce.

``select_tokens`` keeps the k highest scores with ties going to the lower index (a stable sort
of the scores, never ``torch.topk``, whose tie order is unspecified), caps k at the number of
candidates and returns the kept indices in ascending order. ``image_scores`` turns one query
row of post-softmax attention into per-image-token scores (head mean, float64, heads summed
in increasing order).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def select_tokens(scores, k: int):
    """Indices of the k highest scores per row, ascending; ties go to the lower index.

    ``scores``: ``[N]`` or ``[B, N]``, numpy or torch. Returns int64 of shape ``[k']`` or
    ``[B, k']`` with ``k' = min(k, N)``, in the same library as ``scores``.
    Raises ``ValueError`` for ``k < 0`` or any NaN score.
    """
    k = int(k)
    if k < 0:
        raise ValueError(f"keep count must be >= 0, got {k}")
    if _is_torch(scores):
        import torch

        if torch.isnan(scores).any():
            raise ValueError("NaN in token scores")
        n = scores.shape[-1]
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
        return torch.sort(order[..., : min(k, n)], dim=-1).values.to(torch.int64)
    arr = np.asarray(scores)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"scores must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64) if arr.dtype.kind != "f" else arr
    if np.isnan(arr).any():
        raise ValueError("NaN in token scores")
    n = arr.shape[-1]
    order = np.argsort(-arr, axis=-1, kind="stable")
    return np.sort(order[..., : min(k, n)], axis=-1).astype(np.int64)


def image_scores(attn_row, image_start, n_image: int):
    """Head-mean attention on each sample's image span, float64, shape ``[B, n_image]``.

    ``attn_row``: ``[B, H, L]`` post-softmax attention of the query row (the last valid
    prompt token) per head. ``image_start``: an int, or one int per sample. Heads are summed
    in increasing order, then divided by H (both in float64).
    """
    torch_in = _is_torch(attn_row)
    if torch_in:
        import torch

        row = attn_row.detach().to(torch.float64)
    else:
        row = np.asarray(attn_row, dtype=np.float64)
    if row.ndim != 3:
        raise ValueError(f"attn_row must be [B, H, L], got shape {tuple(row.shape)}")
    b, h, length = row.shape
    starts = [int(image_start)] * b if np.ndim(image_start) == 0 else [int(s) for s in image_start]
    if len(starts) != b:
        raise ValueError(f"{len(starts)} image starts for a batch of {b}")
    for s in starts:
        if s < 0 or s + n_image > length:
            raise ValueError(f"image span [{s}, {s + n_image}) outside a row of length {length}")
    spans = [row[i, :, s : s + n_image] for i, s in enumerate(starts)]
    span = torch.stack(spans) if torch_in else np.stack(spans)
    total = span[:, 0] * 1.0
    for head in range(1, h):
        total = total + span[:, head]
    return total / h
