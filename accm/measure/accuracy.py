"""The accuracy harness: ShapesVQA test questions through a pruning configuration, exact match.

Two backends answer the same questions: ``torch`` (the PyTorch reference pipeline on a HF
checkpoint) and ``bundle`` (the torch-free runtime on an exported bundle), so every precision
and target is measured the way users run it. Also reports the fraction of kept image tokens
that land on objects (vision side, and the LLM side's last kept set).
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data import shapes
from ..data.answers import normalise
from ..data.baselines import blind_answers
from ..pruning.schedule import Schedule
from ..stats import paired_difference_se, wilson_interval

CAPTION_MODES = ("selected", "top", "random", "oracle", "none")  # top: the best beam, no selector


@dataclasses.dataclass
class Prediction:
    text: str
    vision_kept: list[int]  # patch indices the LLM received
    llm_kept: list[int] | None  # offsets into those kept at the deepest prune point
    alternatives: list[str] | None = None  # oracle mode: the answer with each candidate caption


class BundleAnswerer:
    backend = "onnxruntime"

    def __init__(self, bundle, provider: str = "cpu"):
        from ..runtime.pipeline import Pipeline

        self.pipe = Pipeline(bundle, provider=provider)
        self.describe = {"bundle": str(bundle), "model": self.pipe.manifest["source_model"]["name"],
                         "accm": "accm" in self.pipe.manifest,
                         "vision_keep": self.pipe.manifest["pruning"]["vision_keep"],
                         "schedule": Schedule.from_json(self.pipe.manifest["pruning"]["schedule"]).spec(),
                         "precision": self.pipe.manifest["precision"]}

    def __call__(self, images, prompts, max_new_tokens) -> list[Prediction]:
        out = self.pipe.generate(images, prompts, max_new_tokens)
        deepest = max(out[0].llm_kept) if out and out[0].llm_kept else None
        return [Prediction(a.text, a.kept_index, a.llm_kept.get(deepest) if deepest is not None else None)
                for a in out]


class TorchAnswerer:
    backend = "torch"

    def __init__(self, model: str | None, vision_keep=None, schedule="none", score_layer=None,
                 random_keep_seed: int | None = None, accm: bool = False, accm_dir: str | None = None,
                 caption_mode: str = "selected", seed: int = 0, caption_source=None):
        """``caption_source(prompts, vision) -> captions``: captions spliced in place of ACCM's
        (e.g. a rule-made bound); needs ``vision_keep``."""
        from ..models.loading import load_llava
        from ..pruning.reference import ReferencePipeline

        lm = load_llava(model)
        self.compensator = None
        if accm:
            from ..compensation.compensator import Compensator
            from ..errors import AccmUserError

            if vision_keep is None:
                raise AccmUserError("--accm compensates vision-side pruning: give --vision-keep K")
            directory = Path(accm_dir) if accm_dir else Path(lm.source.path) / "accm"
            if not (directory / "caption").is_dir():
                raise AccmUserError(f"no trained ACCM modules in {directory} (accm-train accm, or --accm-dir)")
            self.compensator = Compensator.load(directory, lm.processor.tokenizer)
        if caption_mode not in CAPTION_MODES:
            raise ValueError(f"caption mode must be one of {CAPTION_MODES}")
        if caption_source is not None and vision_keep is None:
            raise ValueError("a caption source fills in for vision-side pruning: give vision_keep")
        self.caption_mode = caption_mode
        self.caption_source = caption_source
        self.rng = np.random.default_rng(seed)
        self.ref = ReferencePipeline(lm.model, lm.processor, vision_keep=vision_keep, schedule=schedule,
                                     score_layer=score_layer, random_keep_seed=random_keep_seed,
                                     template=lm.template)
        self.describe = {"model": lm.source.name, "vision_keep": vision_keep,
                         "schedule": self.ref.schedule.spec(), "precision": "fp32",
                         "random_keep": random_keep_seed is not None, "accm": accm,
                         "caption_mode": caption_mode if accm else None}
        if caption_source is not None:
            self.describe["caption_source"] = getattr(caption_source, "name", None) or getattr(
                caption_source, "__name__", type(caption_source).__name__)

    def _answers(self, images, prompts, max_new_tokens, captions, vision):
        prep = self.ref.prepare(images, prompts, captions, vision=vision)
        from ..pruning.llm import generate

        tok = self.ref.tokenizer
        tokens, state = generate(self.ref.model, prep.inputs_embeds, prep.attention_mask, prep.image_mask,
                                 self.ref.schedule, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id, position_ids=prep.position_ids)
        return [tok.decode(t, skip_special_tokens=True).strip() for t in tokens], state, prep

    def __call__(self, images, prompts, max_new_tokens) -> list[Prediction]:
        vision = self.ref.vision(self.ref.pixel_values(images))
        captions, alternatives = None, None
        if self.caption_source is not None:
            captions = self.caption_source(prompts, vision)
        elif self.compensator is not None and self.caption_mode != "none":
            comp = self.compensator(vision.discarded, vision.discarded_index, vision.discarded_scores, prompts)
            if self.caption_mode == "selected":
                captions = comp.captions
            elif self.caption_mode == "top":  # candidates come best beam first
                captions = [c[0] for c in comp.candidates]
            elif self.caption_mode == "random":
                captions = [c[int(self.rng.integers(len(c)))] for c in comp.candidates]
            else:  # oracle: the answer with every candidate; scored as right if any is right
                m = len(comp.candidates[0])
                alternatives = [self._answers(images, prompts, max_new_tokens, [c[j] for c in comp.candidates],
                                              vision)[0] for j in range(m)]
                captions = comp.captions
        texts, state, prep = self._answers(images, prompts, max_new_tokens, captions, vision)
        deepest = max(state.kept) if state.kept else None
        return [Prediction(text, prep.kept_index[b].tolist(),
                           state.kept[deepest][b].tolist() if deepest is not None else None,
                           [alt[b] for alt in alternatives] if alternatives else None)
                for b, text in enumerate(texts)]


def evaluate(answer, n: int = 500, seed: int = 0, batch_size: int = 16, max_new_tokens: int = 4,
             split: str = "test", progress: bool = True, keep_hits: bool = False) -> dict:
    """Accuracy on ``n`` questions of ``split`` (``seed`` picks them), per family, with 95 % Wilson
    intervals and the train-frequency blind baselines. ``keep_hits``: also every question's hit,
    in question order, so two configurations can be compared pairwise on the same questions."""
    samples = shapes.benchmark(split, n, seed)
    hits: dict[str, list[bool]] = defaultdict(list)
    ordered: list[bool] = []
    on_object_vision, on_object_llm = [], []
    t0 = time.time()
    bar = tqdm(total=len(samples), desc="accuracy", unit="q", disable=not progress)
    for s in range(0, len(samples), batch_size):
        chunk = samples[s:s + batch_size]
        scenes = [shapes.render_scene(x.split, x.scene_index) for x in chunk]
        preds = answer([sc.pil() for sc in scenes], [x.question for x in chunk], max_new_tokens)
        for x, sc, p in zip(chunk, scenes, preds):
            options = p.alternatives if p.alternatives is not None else [p.text]
            hits[x.family].append(any(normalise(o) == x.answer for o in options))
            ordered.append(hits[x.family][-1])
            on_obj = sc.patch_object >= 0
            on_object_vision.append(float(on_obj[p.vision_kept].mean()))
            if p.llm_kept is not None:
                on_object_llm.append(float(on_obj[np.asarray(p.vision_kept)[p.llm_kept]].mean()))
        bar.update(len(chunk))
    bar.close()
    flat = [h for v in hits.values() for h in v]
    out = {
        "n": len(samples), "seed": seed, "split": split,
        "accuracy": float(np.mean(flat)),
        "ci95": interval(flat),
        "per_family": {f: float(np.mean(v)) for f, v in sorted(hits.items())},
        "per_family_ci95": {f: interval(v) for f, v in sorted(hits.items())},
        "per_family_n": {f: len(v) for f, v in sorted(hits.items())},
        "blind_baselines": blind_baselines(samples),
        "kept_on_object": float(np.mean(on_object_vision)),
        "elapsed_s": round(time.time() - t0, 2),
        "backend": answer.backend,
        **answer.describe,
    }
    if on_object_llm:
        out["llm_kept_on_object"] = float(np.mean(on_object_llm))
    if keep_hits:
        out["hits"] = [int(h) for h in ordered]
    return out


def paired_difference(hits_a, hits_b) -> dict:
    """``a - b`` in accuracy on the same questions: the mean and its 95 % interval (normal
    approximation on the per-question differences, which pairs away the shared difficulty)."""
    difference, se = paired_difference_se(hits_a, hits_b)
    return {"difference": difference, "ci95": [round(difference - 1.96 * se, 4), round(difference + 1.96 * se, 4)],
            "se": se}


def interval(hits) -> list[float]:
    """The 95 % Wilson interval of a list of hits."""
    lo, hi = wilson_interval(int(np.sum(hits)), len(hits))
    return [round(lo, 4), round(hi, 4)]


def blind_baselines(samples) -> dict:
    """What the image-blind answerers (fitted on train frequencies only) score on these questions."""
    out = {}
    for name, answers in blind_answers(samples).items():
        hits = [a == s.answer for a, s in zip(answers, samples)]
        fams = sorted({s.family for s in samples})
        out[name] = {"accuracy": float(np.mean(hits)), "ci95": interval(hits),
                     "per_family": {f: float(np.mean([h for h, s in zip(hits, samples) if s.family == f]))
                                    for f in fams}}
    return out
