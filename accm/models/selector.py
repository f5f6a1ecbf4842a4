"""ACCM's selector: which of the M candidate captions fits the question.

Each candidate is the text ``Question: <q>  Supplemental information for questions: <caption>``
(``accm.models.caption_text``),
encoded by a *frozen* text encoder into one vector (its last valid token's hidden state, as
CLIP's text tower uses its EOS token). The paper's encoder is LongCLIP's text tower; here it is
a frozen snapshot of the stage-1 caption LM's transformer (a ``transformers`` GPT-2), so the
selector needs no external weights. A 4-layer pre-norm transformer then reads the M vectors
together, a linear layer scores each, softmax over M; argmax picks.

Two departures from the paper, both off in a config that does not name them: ``text_format``
"compact" drops the paper's fixed words from each text (``caption_text.SELECTOR_FORMATS``), and
``rank_slots`` adds a learned vector per candidate slot. Candidates arrive best beam first, and
the paper's selector, blind to that order, cannot tell two captions apart that differ only in a
value it cannot check from text (``c4 red star`` against ``c4 blue star``); the caption model's
own ranking can.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from .caption import encoder_layers

CONFIG_FILE = "accm_selector.json"
WEIGHTS_FILE = "selector.safetensors"


@dataclasses.dataclass
class SelectorConfig:
    encoder: dict  # GPT2Config.to_dict() of the frozen text encoder
    hidden: int = 128
    layers: int = 4
    heads: int = 8
    max_text_tokens: int = 128
    text_format: str = "paper"  # caption_text.SELECTOR_FORMATS key
    rank_slots: int = 0  # > 0: a learned vector per candidate slot (beam rank); 0: order-blind, as the paper


class Selector(nn.Module):
    def __init__(self, cfg: SelectorConfig):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        self.cfg = cfg
        enc_cfg = GPT2Config.from_dict(cfg.encoder)
        enc_cfg._attn_implementation = "sdpa"
        self.encoder = GPT2Model(enc_cfg)
        self.encoder.requires_grad_(False)
        self.proj = nn.Linear(enc_cfg.n_embd, cfg.hidden)
        self.transformer = encoder_layers(cfg.hidden, cfg.heads, cfg.layers)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.score = nn.Linear(cfg.hidden, 1)
        self.rank = nn.Parameter(torch.zeros(cfg.rank_slots, cfg.hidden)) if cfg.rank_slots else None

    @classmethod
    def from_caption_lm(cls, caption_lm, hidden: int = 128, layers: int = 4, heads: int = 8,
                        text_format: str = "paper", rank_slots: int = 0) -> Selector:
        """A selector whose frozen encoder is a copy of ``caption_lm``'s transformer."""
        sel = cls(SelectorConfig(caption_lm.config.to_dict(), hidden, layers, heads, text_format=text_format,
                                 rank_slots=rank_slots))
        sel.encoder.load_state_dict(caption_lm.transformer.state_dict())
        return sel

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[N, T]`` right-padded token ids → ``[N, D]`` (last valid token's hidden state)."""
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        last = mask.sum(-1) - 1
        return hidden[torch.arange(ids.shape[0], device=ids.device), last]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``ids``/``mask`` ``[B, M, T]`` → logits ``[B, M]`` (softmax over M gives the choice)."""
        bsz, m, length = ids.shape
        with torch.no_grad():
            vec = self.encode(ids.reshape(bsz * m, length), mask.reshape(bsz * m, length))
        x = self.proj(vec).reshape(bsz, m, -1)
        if self.rank is not None:
            x = x + self.rank[:m]
        x = self.transformer(x)
        return self.score(self.norm(x)).squeeze(-1)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self.cfg), indent=1))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / WEIGHTS_FILE))

    @classmethod
    def load(cls, directory: Path) -> Selector:
        from safetensors.torch import load_file

        directory = Path(directory)
        sel = cls(SelectorConfig(**json.loads((directory / CONFIG_FILE).read_text())))
        sel.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return sel.eval()
