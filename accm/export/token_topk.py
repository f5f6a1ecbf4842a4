"""The token top-k op in both exported forms.

``target="ort"``: standard ONNX ops (``TopK`` with its lower-index tie rule, an index sort,
gathers). ``target="trt"``: one ``AccmTokenTopK`` node (domain ``accm``, version 1) for the
TensorRT plugin of ``plugins/accm_token_topk``, with exactly the same outputs.
"""

from __future__ import annotations

import torch

from ..bundle.names import PLUGIN_DOMAIN, PLUGIN_NAME

DOMAIN_OP = f"{PLUGIN_DOMAIN}::{PLUGIN_NAME}"


def topk_ascending(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores per row, ascending (ONNX TopK tie rule)."""
    top = torch.topk(scores, k, dim=-1, largest=True, sorted=True).indices
    return torch.sort(top, dim=-1).values


def complement_ascending(kept: torch.Tensor, n: int) -> torch.Tensor:
    """Ascending indices of ``[0, n)`` missing from each row of ``kept``."""
    idx = torch.arange(n, device=kept.device).expand(kept.shape[0], n)
    taken = torch.zeros_like(idx).scatter(1, kept, torch.ones_like(kept))
    keyed = torch.where(taken > 0, idx + n, idx)
    return torch.topk(keyed, n - kept.shape[1], dim=-1, largest=False, sorted=True).indices


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def token_topk(scores: torch.Tensor, tokens: torch.Tensor, k: int, emit_discarded: bool, target: str = "ort"):
    """``(kept, kept_index[, discarded, discarded_index])``, indices int64 and ascending."""
    if target == "trt" and torch.onnx.is_in_onnx_export():
        b, n, d = tokens.shape
        dtypes = [tokens.dtype, torch.int32]
        shapes = [[b, k, d], [b, k]]
        if emit_discarded:
            dtypes += [tokens.dtype, torch.int32]
            shapes += [[b, n - k, d], [b, n - k]]
        outs = torch.onnx.ops.symbolic_multi_out(
            DOMAIN_OP, (scores, tokens), {"k": int(k), "emit_discarded": int(emit_discarded)},
            dtypes=dtypes, shapes=shapes, version=1,
        )
        outs = list(outs)
        outs[1] = outs[1].to(torch.int64)
        if emit_discarded:
            outs[3] = outs[3].to(torch.int64)
        return tuple(outs)
    kept_index = topk_ascending(scores, k)
    out = (gather_tokens(tokens, kept_index), kept_index)
    if emit_discarded:
        dropped = complement_ascending(kept_index, scores.shape[1])
        out += (gather_tokens(tokens, dropped), dropped)
    return out


class StandardTokenTopK(torch.nn.Module):
    """The standard-op form as a module (for inlining in place of a plugin node)."""

    def __init__(self, k: int, emit_discarded: bool):
        super().__init__()
        self.k, self.emit = k, emit_discarded

    def forward(self, scores, tokens):
        out = list(token_topk(scores, tokens, self.k, self.emit))
        out[1] = out[1].to(torch.int32)
        if self.emit:
            out[3] = out[3].to(torch.int32)
        return tuple(out)
