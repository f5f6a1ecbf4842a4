"""The torch-free runtime: chains a bundle's stages (ONNX Runtime by default) and times them.

image → preprocess (Pillow+numpy) → vision (prune) → prompt ids with the kept image span at
its original positions → embed → prefill (LLM-side schedule inside) → greedy decode with each
layer's own KV cache. Imports numpy, onnxruntime, tokenizers and Pillow only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ..data.preprocess import ImageSpec, preprocess
from ..engines.ort import open_bundle_stages, shares_weights
from ..errors import InputError
from ..manifest import load_manifest
from ..models.prompt import build_prompt_ids, left_pad, rendered_prompt_ids
from .inputs import check_prompt


@dataclasses.dataclass
class Answer:
    text: str
    token_ids: list[int]
    counts: dict
    timings_ms: dict
    kept_index: list[int]  # vision-side kept patches
    llm_kept: dict[int, list[int]] = dataclasses.field(default_factory=dict)  # prune layer -> kept offsets
    caption: str | None = None  # the ACCM caption spliced into the prompt
    candidates: list[str] | None = None
    first_logits: np.ndarray | None = None  # the logits the first answer token was chosen from


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


class Pipeline:
    def __init__(self, bundle: str | Path, provider: str = "cpu", verify: bool = True, threads: int | None = None,
                 share_weights: bool = False):
        self.root = Path(bundle)
        self.manifest = load_manifest(self.root, verify=verify)
        m = self.manifest
        self.spec = ImageSpec.from_json(m["image"])
        self.template = m["prompt_template"]
        self.tokens = m["tokens"]
        self.dims = m["model"]
        self.groups = m["pruning"]["layer_groups"]
        self.prune_points = sorted(int(k) for k in m["pruning"]["prune_points"])
        self.tokenizer = Tokenizer.from_file(str(self.root / m["tokenizer"]))
        self.provider = provider
        self.shared_weights = share_weights and shares_weights(m, provider)
        stages = open_bundle_stages(self.root, m, provider, threads, self.shared_weights)
        self.vision = stages["vision"]
        self.embed = stages["embed"]
        self.prefill = stages["llm_prefill"]
        self.decode = stages["llm_decode"]
        self.compensator = None
        if "accm" in m:
            from .compensation import BundleCompensator

            self.compensator = BundleCompensator(m, stages, self.tokenizer)

    # prompt ----------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str, caption: str | None = None) -> tuple[list[int], list[int]]:
        check_prompt(prompt)
        return rendered_prompt_ids(self.tokenizer, self.template, prompt, caption, self.tokens["image_token_id"])

    # stages ----------------------------------------------------------------------------------
    def run_vision(self, images) -> dict[str, np.ndarray]:
        pixels = np.stack([preprocess(im, self.spec) for im in images])
        return self.vision.run({"pixel_values": pixels})

    def embed_ids(self, ids: np.ndarray) -> np.ndarray:
        return self.embed.run({"input_ids": ids})["inputs_embeds"]

    def group_masks(self, mask: np.ndarray, starts: np.ndarray, kept: dict[int, np.ndarray]) -> list[np.ndarray]:
        """The valid-key mask of each layer group's cache after prefill."""
        masks = [mask]
        n_cur = self.tokens["n_image"]
        for layer in self.prune_points:
            prev = masks[-1]
            k = kept[layer].shape[1]
            rows = [np.concatenate([prev[b, :s], np.ones(k, prev.dtype), prev[b, s + n_cur:]])
                    for b, s in enumerate(starts)]
            masks.append(np.stack(rows))
            n_cur = k
        return masks

    # generation ------------------------------------------------------------------------------
    def generate(self, images, prompts: list[str], max_new_tokens: int = 32, captions=None,
                 on_token: Callable[[int, int], None] | None = None, ignore_eos: bool = False) -> list[Answer]:
        """Answer each (image, prompt). ``ignore_eos`` (benchmarks) always decodes ``max_new_tokens``."""
        if len(images) != len(prompts):
            raise InputError("one prompt per image")
        if max_new_tokens < 1:
            raise InputError("--max-new-tokens must be at least 1")
        t_start = time.perf_counter()
        timings: dict = {}
        for p in prompts:
            check_prompt(p)
        t0 = time.perf_counter()
        pixels = np.stack([preprocess(im, self.spec) for im in images])
        timings["preprocess"] = _ms(t0)
        t0 = time.perf_counter()
        vis = self.vision.run({"pixel_values": pixels})
        timings["vision"] = _ms(t0)
        image_embeds, kept_index = vis["image_embeds"], vis["kept_index"]
        comp = None
        if captions is None and self.compensator is not None:
            comp = self.compensator(vis["discarded_features"], vis["discarded_index"], vis["discarded_scores"],
                                    prompts)
            captions = comp.captions
            timings["caption"], timings["selection"] = comp.caption_ms, comp.selection_ms
        captions = captions or [None] * len(prompts)
        parts = [self.prompt_ids(p, c) for p, c in zip(prompts, captions)]
        rows, positions = [], []
        for b, (prefix, suffix) in enumerate(parts):
            ids, pos = build_prompt_ids(prefix, suffix, kept_index[b], self.tokens["image_token_id"],
                                        self.tokens["n_patches"])
            rows.append(ids)
            positions.append(pos)
        longest = max(p[-1] for p in positions) + max_new_tokens
        if longest >= self.dims.get("max_positions", 1 << 30):
            raise InputError(f"prompt too long: {longest} positions with the answer, the model has "
                             f"{self.dims['max_positions']}")
        ids, pos, mask = left_pad(rows, positions, self.tokens["pad_token_id"])
        t0 = time.perf_counter()
        image_slot = ids == self.tokens["image_token_id"]
        embeds = self.embed_ids(np.where(image_slot, 0, ids))
        embeds[image_slot] = image_embeds.reshape(-1, image_embeds.shape[-1])
        out = self.prefill.run({"input_ids": ids, "inputs_embeds": embeds, "attention_mask": mask,
                                "position_ids": pos})
        timings["prefill"] = _ms(t0)
        starts = image_slot.argmax(1)
        kept = {layer: out[f"kept_index.{layer}"] for layer in self.prune_points}
        masks = self.group_masks(mask, starts, kept)
        n_layers = self.dims["num_layers"]
        past = [out[f"present.{li}.{kind}"] for li in range(n_layers) for kind in ("key", "value")]
        next_pos = np.where(mask > 0, pos, -1).max(1) + 1
        logits = out["logits"]
        first_logits = logits
        eos, pad = self.tokens["eos_token_id"], self.tokens["pad_token_id"]
        bsz = len(prompts)
        done = np.zeros(bsz, dtype=bool)
        generated: list[list[int]] = [[] for _ in range(bsz)]
        decode_ms = []
        for step in range(max_new_tokens):
            token = logits.argmax(-1).astype(np.int64)
            token = np.where(done, pad, token)
            for b in range(bsz):
                if not done[b]:
                    generated[b].append(int(token[b]))
                    if on_token is not None:
                        on_token(b, int(token[b]))
            if step == 0:
                timings["ttft"] = _ms(t_start)
            if not ignore_eos:
                done |= token == eos
            if done.all() or step + 1 == max_new_tokens:
                break
            t0 = time.perf_counter()
            masks = [np.concatenate([m, np.ones((bsz, 1), m.dtype)], 1) for m in masks]
            feeds = {"inputs_embeds": self.embed_ids(token[:, None]), "position_ids": (next_pos + step)[:, None]}
            feeds.update({f"attention_mask.{g}": m for g, m in enumerate(masks)})
            feeds.update({f"past.{li}.{kind}": past[2 * li + j] for li in range(n_layers)
                          for j, kind in enumerate(("key", "value"))})
            res = self.decode.run(feeds)
            logits = res["logits"]
            past = [res[f"present.{li}.{kind}"] for li in range(n_layers) for kind in ("key", "value")]
            decode_ms.append(_ms(t0))
        timings["decode_steps"] = decode_ms
        timings["total"] = _ms(t_start)
        answers = []
        for b in range(bsz):
            toks = [t for t in generated[b] if t != eos]
            answers.append(Answer(
                text=self.tokenizer.decode(toks, skip_special_tokens=True).strip(),
                token_ids=generated[b],
                counts={"image_tokens_kept": int(kept_index.shape[1]), "prompt_tokens": int(mask[b].sum()),
                        "generated": len(generated[b]),
                        "llm_image_tokens_per_layer": self.manifest["pruning"]["layer_counts"]},
                timings_ms=timings,
                kept_index=kept_index[b].tolist(),
                llm_kept={layer: kept[layer][b].tolist() for layer in kept},
                caption=captions[b],
                candidates=comp.candidates[b] if comp is not None else None,
                first_logits=first_logits[b],
            ))
        return answers
