"""ACCM in the torch-free runtime: caption beams on ONNX Runtime, the selector, the chosen caption."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..bundle import names
from ..bundle.manifest import BundleError
from ..models.beam import beam_search
from ..models.caption_text import SELECTOR_FORMATS, pick, selector_batch
from ..models.prompt import encode_text, left_pad


@dataclasses.dataclass
class RuntimeCompensation:
    captions: list[str]
    candidates: list[list[str]]
    probs: np.ndarray
    selected: list[int]
    caption_ms: float
    selection_ms: float


class BundleCompensator:
    def __init__(self, manifest: dict, stages: dict, tokenizer):
        self.cfg = manifest["accm"]
        # bundles written before the selector's text format was recorded used the paper's
        self.text_format = self.cfg.get("selector_text_format", "paper")
        if self.text_format not in SELECTOR_FORMATS:
            raise BundleError("altered bundle: its manifest is malformed (accm.selector_text_format must be one of "
                              f"{', '.join(SELECTOR_FORMATS)})")
        self.tokenizer = tokenizer
        self.prefix = stages[names.CAPTION_PREFIX]
        self.embed = stages[names.CAPTION_EMBED]
        self.decode = stages[names.CAPTION_DECODE]
        self.selector = stages[names.SELECTOR]

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        return self.embed.run({names.INPUT_IDS: ids})[names.INPUTS_EMBEDS]

    def candidates(self, discarded: np.ndarray, discarded_index: np.ndarray, discarded_scores: np.ndarray,
                   questions: list[str]):
        cfg = self.cfg
        prefix = self.prefix.run({names.DISCARDED_FEATURES: discarded, names.DISCARDED_INDEX: discarded_index,
                                  names.DISCARDED_SCORES: discarded_scores})[names.PREFIX]
        rows = [encode_text(self.tokenizer, q) for q in questions]
        ids, _, qmask = left_pad(rows, [list(range(len(r))) for r in rows], cfg["pad_token_id"])
        bsz = len(questions)
        embeds = np.concatenate([self._embed(ids), prefix], axis=1)
        new_mask = np.concatenate([qmask, np.ones((bsz, prefix.shape[1]), np.int64)], axis=1)
        pos = np.clip(new_mask.cumsum(-1) - 1, 0, None)
        past = [np.zeros((bsz, cfg["heads"], 0, cfg["head_dim"]), np.float32) for _ in range(2 * cfg["layers"])]
        out = self._run(embeds, new_mask, np.zeros((bsz, 0), np.int64), pos, past)
        state = {"past": out[1:], "mask": new_mask, "pos": pos[:, -1]}

        def step(tokens: np.ndarray, parents: np.ndarray) -> np.ndarray:
            past_mask = state["mask"][parents]
            position = state["pos"][parents] + 1
            res = self._run(self._embed(tokens[:, None]), np.ones((len(tokens), 1), np.int64), past_mask,
                            position[:, None], [p[parents] for p in state["past"]])
            state.update(past=res[1:], mask=np.concatenate([past_mask, np.ones((len(tokens), 1), np.int64)], 1),
                         pos=position)
            return res[0]

        stop = set(cfg["stop_token_ids"]) | {cfg["eos_token_id"]}
        return beam_search(out[0], step, cfg["beams"], cfg["max_caption_tokens"], stop, cfg["pad_token_id"])

    def _run(self, embeds, new_mask, past_mask, pos, past) -> list[np.ndarray]:
        feeds = {names.INPUTS_EMBEDS: embeds, names.NEW_MASK: new_mask, names.PAST_MASK: past_mask,
                 names.POSITION_IDS: pos}
        feeds.update(zip(names.kv_names(self.cfg["layers"], names.past), past))
        res = self.decode.run(feeds)
        return [res[names.LOGITS]] + [res[name] for name in names.kv_names(self.cfg["layers"])]

    def decode_text(self, tokens: list[int]) -> str:
        toks = [t for t in tokens if t != self.cfg["eos_token_id"]]
        return self.tokenizer.decode(toks, skip_special_tokens=True).strip()

    def __call__(self, discarded, discarded_index, discarded_scores, questions: list[str]) -> RuntimeCompensation:
        t0 = time.perf_counter()
        beams = self.candidates(discarded, discarded_index, discarded_scores, questions)
        texts = [[self.decode_text(b.tokens) for b in row] for row in beams]
        t1 = time.perf_counter()
        ids, mask = selector_batch(lambda t: encode_text(self.tokenizer, t), questions, texts,
                                   self.cfg["selector_max_tokens"], self.cfg["pad_token_id"], self.text_format)
        probs = self.selector.run({names.INPUT_IDS: ids, names.ATTENTION_MASK: mask})[names.PROBS]
        chosen = pick(probs)
        t2 = time.perf_counter()
        return RuntimeCompensation([t[c] for t, c in zip(texts, chosen)], texts, probs, chosen,
                                   round((t1 - t0) * 1000, 3), round((t2 - t1) * 1000, 3))
