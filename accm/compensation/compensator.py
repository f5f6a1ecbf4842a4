"""ACCM compensation in PyTorch: discarded tokens + question → M candidate captions → the selected one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..models.beam import Beam, beam_search
from ..models.caption import CaptionModel
from ..models.caption_text import pick, selector_batch
from ..models.placement import module_device
from ..models.prompt import encode_text
from ..models.selector import Selector

CAPTION_DIR, SELECTOR_DIR = "caption", "selector"


@dataclasses.dataclass
class Compensation:
    captions: list[str]  # the selected caption per sample
    candidates: list[list[str]]  # M candidates per sample, best beam first
    beams: list[list[Beam]]
    probs: np.ndarray  # [B, M] selector probabilities
    selected: list[int]


class Compensator:
    def __init__(self, caption: CaptionModel, selector: Selector | None, tokenizer):
        self.caption = caption.eval()
        self.selector = selector.eval() if selector is not None else None  # None: candidates only
        self.tokenizer = tokenizer
        self.cfg = caption.cfg

    @classmethod
    def load(cls, directory: str | Path, tokenizer) -> Compensator:
        directory = Path(directory)
        return cls(CaptionModel.load(directory / CAPTION_DIR), Selector.load(directory / SELECTOR_DIR), tokenizer)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.caption.save(directory / CAPTION_DIR)
        self.selector.save(directory / SELECTOR_DIR)

    def question_ids(self, questions: list[str]) -> list[list[int]]:
        return [encode_text(self.tokenizer.backend_tokenizer, q) for q in questions]

    @torch.no_grad()
    def candidates(self, discarded: torch.Tensor, discarded_index: torch.Tensor, discarded_scores: torch.Tensor,
                   questions: list[str], beams: int | None = None) -> list[list[Beam]]:
        cfg = self.cfg
        prefix = self.caption.mapper(discarded.float(), discarded_index, discarded_scores.float())
        embeds, mask, pos = self.caption.prompt_embeds(self.question_ids(questions), prefix)
        out = self.caption.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True)
        cache = out.past_key_values
        state = {"mask": mask, "pos": pos[:, -1]}

        device = prefix.device  # the beams are kept in numpy; the model runs where it lies

        def step(tokens: np.ndarray, parents: np.ndarray) -> np.ndarray:
            idx = torch.from_numpy(parents).to(device)
            cache.reorder_cache(idx)
            state["mask"] = torch.cat([state["mask"][idx], torch.ones(len(idx), 1, dtype=torch.long, device=device)], 1)
            state["pos"] = state["pos"][idx] + 1
            res = self.caption.lm(input_ids=torch.from_numpy(tokens).to(device)[:, None], attention_mask=state["mask"],
                                  position_ids=state["pos"][:, None], past_key_values=cache, use_cache=True)
            return res.logits[:, -1].float().cpu().numpy()

        return beam_search(out.logits[:, -1].float().cpu().numpy(), step, beams or cfg.beams, cfg.max_caption_tokens,
                           set(cfg.stop_token_ids) | {cfg.eos_token_id}, cfg.pad_token_id)

    def decode(self, beam: Beam) -> str:
        toks = [t for t in beam.tokens if t != self.cfg.eos_token_id]
        return self.tokenizer.decode(toks, skip_special_tokens=True).strip()

    def selector_inputs(self, questions: list[str], candidates: list[list[str]]):
        encode = lambda text: encode_text(self.tokenizer.backend_tokenizer, text)  # noqa: E731
        cfg = self.selector.cfg
        return selector_batch(encode, questions, candidates, cfg.max_text_tokens, self.cfg.pad_token_id,
                              cfg.text_format)

    @torch.no_grad()
    def select(self, questions: list[str], candidates: list[list[str]]) -> np.ndarray:
        ids, mask = self.selector_inputs(questions, candidates)
        logits = self.selector(*self.selector_tensors(ids, mask))
        return torch.softmax(logits.float(), -1).cpu().numpy()

    def selector_tensors(self, ids: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        device = module_device(self.selector)
        return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)

    def __call__(self, discarded, discarded_index, discarded_scores, questions: list[str]) -> Compensation:
        beams = self.candidates(discarded, discarded_index, discarded_scores, questions)
        texts = [[self.decode(b) for b in row] for row in beams]
        probs = self.select(questions, texts)
        selected = pick(probs)
        return Compensation([t[s] for t, s in zip(texts, selected)], texts, beams, probs, selected)
