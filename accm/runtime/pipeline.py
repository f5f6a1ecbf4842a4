"""The torch-free runtime: chains a bundle's stages (ONNX Runtime by default) and times them.

image → preprocess (Pillow+numpy) → vision (prune) → prompt ids with the kept image span at
its original positions → embed → prefill (LLM-side schedule inside) → greedy decode with each
layer's own KV cache. Imports numpy, onnxruntime, tokenizers and Pillow only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ..bundle import names
from ..bundle.manifest import load_manifest
from ..data.preprocess import ImageSpec, preprocess
from ..engines.ort import open_bundle_stages, shares_weights
from ..errors import InputError
from ..inputs import check_prompt
from ..models.prompt import build_prompt_ids, left_pad, rendered_prompt_ids


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


@dataclasses.dataclass
class Run:
    """One batch in flight: what the steps of ``Pipeline.start`` and ``decode_steps`` hand on."""

    limits: np.ndarray  # max new tokens per row
    t_start: float
    timings: dict = dataclasses.field(default_factory=dict)
    kept_index: np.ndarray | None = None
    captions: list = dataclasses.field(default_factory=list)
    candidates: list | None = None
    llm_kept: dict = dataclasses.field(default_factory=dict)
    masks: list = dataclasses.field(default_factory=list)
    past: list = dataclasses.field(default_factory=list)
    next_pos: np.ndarray | None = None
    logits: np.ndarray | None = None
    first_logits: np.ndarray | None = None
    prompt_tokens: np.ndarray | None = None
    generated: list = dataclasses.field(default_factory=list)
    done: np.ndarray | None = None
    decode_ms: list = dataclasses.field(default_factory=list)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


class Pipeline:
    def __init__(self, bundle: str | Path, provider: str = "cpu", verify: bool = True, threads: int | None = None,
                 share_weights: bool = False):
        root = Path(bundle)
        m = load_manifest(root, verify=verify)
        shared = share_weights and shares_weights(m, provider)
        stages = open_bundle_stages(root, m, provider, threads, shared)
        self._setup(m, Tokenizer.from_file(str(root / m["tokenizer"])), stages, provider)
        self.root, self.shared_weights = root, shared

    @classmethod
    def from_stages(cls, manifest: dict, tokenizer: Tokenizer, stages: dict, provider: str) -> Pipeline:
        """A pipeline over stage runners other than a bundle's sessions (anything with
        ``run(feeds) -> outputs``: int8 calibration runs the PyTorch stages through it)."""
        pipe = cls.__new__(cls)
        pipe._setup(manifest, tokenizer, stages, provider)
        pipe.root, pipe.shared_weights = None, False
        return pipe

    def _setup(self, m: dict, tokenizer: Tokenizer, stages: dict, provider: str) -> None:
        self.manifest = m
        self.spec = ImageSpec.from_json(m["image"])
        self.template = m["prompt_template"]
        self.tokens = m["tokens"]
        self.dims = m["model"]
        self.groups = m["pruning"]["layer_groups"]
        self.prune_points = sorted(int(k) for k in m["pruning"]["prune_points"])
        self.tokenizer = tokenizer
        self.provider = provider
        self.vision = stages[names.VISION]
        self.embed = stages[names.EMBED]
        self.prefill = stages[names.LLM_PREFILL]
        self.decode = stages[names.LLM_DECODE]
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
        return self.vision.run({names.PIXEL_VALUES: pixels})

    def embed_ids(self, ids: np.ndarray) -> np.ndarray:
        return self.embed.run({names.INPUT_IDS: ids})[names.INPUTS_EMBEDS]

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

    # generation, in named steps ------------------------------------------------------------
    def generate(self, images, prompts: list[str], max_new_tokens: int | list[int] = 32, captions=None,
                 on_token: Callable[[int, int], None] | None = None, ignore_eos: bool = False) -> list[Answer]:
        """Answer each (image, prompt). ``max_new_tokens`` may differ per prompt (a row that has its
        tokens stops while the others go on). ``ignore_eos`` (benchmarks) always decodes them all."""
        run = self.start(images, prompts, max_new_tokens, captions)
        for tokens, fresh in self.decode_steps(run, ignore_eos):
            if on_token is not None:
                for b in np.flatnonzero(fresh):
                    on_token(int(b), int(tokens[b]))
        return self.answers(run)

    def start(self, images, prompts: list[str], max_new_tokens: int | list[int] = 32, captions=None) -> Run:
        """Everything up to the first answer token: images → (captions) → prompt ids → prefill."""
        if len(images) != len(prompts):
            raise InputError("one prompt per image")
        limits = np.asarray([max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else max_new_tokens)
        if len(limits) != len(prompts) or (limits < 1).any():
            raise InputError("--max-new-tokens must be at least 1")
        for p in prompts:
            check_prompt(p)
        run = Run(limits=limits, t_start=time.perf_counter())
        vis = self.encode_images(images, run.timings)
        run.kept_index = vis[names.KEPT_INDEX]
        run.captions, run.candidates = self.compensate(vis, prompts, captions, run.timings)
        ids, pos, mask = self.build_inputs(prompts, run.captions, run.kept_index, int(limits.max()))
        self.run_prefill(run, ids, pos, mask, vis[names.IMAGE_EMBEDS])
        return run

    def encode_images(self, images, timings: dict) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        pixels = np.stack([preprocess(im, self.spec) for im in images])
        timings["preprocess"] = _ms(t0)
        t0 = time.perf_counter()
        vis = self.vision.run({names.PIXEL_VALUES: pixels})
        timings["vision"] = _ms(t0)
        return vis

    def compensate(self, vis: dict, prompts: list[str], captions, timings: dict):
        """(captions, candidates): ACCM's selected captions of the discarded tokens, if the bundle has
        ACCM and none were given."""
        if captions is not None or self.compensator is None:
            return captions or [None] * len(prompts), None
        comp = self.compensator(vis[names.DISCARDED_FEATURES], vis[names.DISCARDED_INDEX], vis[names.DISCARDED_SCORES],
                                prompts)
        timings["caption"], timings["selection"] = comp.caption_ms, comp.selection_ms
        return comp.captions, comp.candidates

    def build_inputs(self, prompts: list[str], captions: list, kept_index: np.ndarray, max_new_tokens: int):
        """Left-padded (ids, position ids, mask): each prompt with its kept image tokens at their
        original positions."""
        rows, positions = [], []
        for b, (p, c) in enumerate(zip(prompts, captions)):
            prefix, suffix = self.prompt_ids(p, c)
            ids, pos = build_prompt_ids(prefix, suffix, kept_index[b], self.tokens["image_token_id"],
                                        self.tokens["n_patches"])
            rows.append(ids)
            positions.append(pos)
        longest = max(p[-1] for p in positions) + max_new_tokens
        if longest >= self.dims.get("max_positions", 1 << 30):
            raise InputError(f"prompt too long: {longest} positions with the answer, the model has "
                             f"{self.dims['max_positions']}")
        return left_pad(rows, positions, self.tokens["pad_token_id"])

    def run_prefill(self, run: Run, ids, pos, mask, image_embeds) -> None:
        t0 = time.perf_counter()
        image_slot = ids == self.tokens["image_token_id"]
        embeds = self.embed_ids(np.where(image_slot, 0, ids))
        embeds[image_slot] = image_embeds.reshape(-1, image_embeds.shape[-1])
        out = self.prefill.run({names.INPUT_IDS: ids, names.INPUTS_EMBEDS: embeds, names.ATTENTION_MASK: mask,
                                names.POSITION_IDS: pos})
        run.timings["prefill"] = _ms(t0)
        run.llm_kept = {layer: out[names.kept_index(layer)] for layer in self.prune_points}
        run.masks = self.group_masks(mask, image_slot.argmax(1), run.llm_kept)
        run.past = [out[name] for name in names.kv_names(self.dims["num_layers"])]
        run.next_pos = np.where(mask > 0, pos, -1).max(1) + 1
        run.logits = run.first_logits = out[names.LOGITS]
        run.prompt_tokens = mask.sum(1)
        run.generated = [[] for _ in range(len(ids))]
        run.done = np.zeros(len(ids), dtype=bool)

    def decode_steps(self, run: Run, ignore_eos: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One greedy token per step for every row still going: yields (tokens, which rows got a
        new token). Public so a server can stream rows and let finished ones go."""
        eos, pad = self.tokens["eos_token_id"], self.tokens["pad_token_id"]
        n_layers, bsz = self.dims["num_layers"], len(run.done)
        for step in range(int(run.limits.max())):
            fresh = ~run.done
            token = np.where(run.done, pad, run.logits.argmax(-1).astype(np.int64))
            for b in np.flatnonzero(fresh):
                run.generated[b].append(int(token[b]))
            if step == 0:
                run.timings["ttft"] = _ms(run.t_start)
            if not ignore_eos:
                run.done |= token == eos
            run.done |= step + 1 >= run.limits
            yield token, fresh
            if run.done.all():
                break
            t0 = time.perf_counter()
            run.masks = [np.concatenate([m, np.ones((bsz, 1), m.dtype)], 1) for m in run.masks]
            feeds = {names.INPUTS_EMBEDS: self.embed_ids(token[:, None]),
                     names.POSITION_IDS: (run.next_pos + step)[:, None]}
            feeds.update({names.group_mask(g): m for g, m in enumerate(run.masks)})
            feeds.update(zip(names.kv_names(n_layers, names.past), run.past))
            res = self.decode.run(feeds)
            run.logits = res[names.LOGITS]
            run.past = [res[name] for name in names.kv_names(n_layers)]
            run.decode_ms.append(_ms(t0))

    def answer(self, run: Run, b: int) -> Answer:
        """Row ``b`` of a run, as far as it has decoded."""
        eos = self.tokens["eos_token_id"]
        toks = [t for t in run.generated[b] if t != eos]
        timings = {**run.timings, "decode_steps": list(run.decode_ms), "total": _ms(run.t_start)}
        return Answer(
            text=self.tokenizer.decode(toks, skip_special_tokens=True).strip(),
            token_ids=list(run.generated[b]),
            counts={"image_tokens_kept": int(run.kept_index.shape[1]), "prompt_tokens": int(run.prompt_tokens[b]),
                    "generated": len(run.generated[b]),
                    "llm_image_tokens_per_layer": self.manifest["pruning"]["layer_counts"]},
            timings_ms=timings,
            kept_index=run.kept_index[b].tolist(),
            llm_kept={layer: kept[b].tolist() for layer, kept in run.llm_kept.items()},
            caption=run.captions[b],
            candidates=run.candidates[b] if run.candidates is not None else None,
            first_logits=run.first_logits[b],
        )

    def answers(self, run: Run) -> list[Answer]:
        return [self.answer(run, b) for b in range(len(run.done))]
