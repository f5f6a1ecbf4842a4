"""Scoring schedules on validation data with the PyTorch reference, and the rank-similarity check.

Validation data: ShapesVQA's val split (never test), or a JSONL of ``{image, question[, answer]}``.
Metric: exact-match accuracy when every sample has an answer, otherwise agreement with the
full-token model's own greedy answers (label-free, so it works with user images only).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data import shapes
from ..data.answers import normalise
from ..files import atomic_path
from ..inputs import jsonl_rows, load_image
from .llm import last_query_attention
from .reference import ReferencePipeline
from .schedule import Schedule
from .search import kendall_tau


@dataclasses.dataclass
class ValSample:
    image: object
    question: str
    answer: str | None


def shapes_val(n: int, seed: int = 0) -> list[ValSample]:
    return [ValSample(shapes.render_scene(s.split, s.scene_index).pil(), s.question, s.answer)
            for s in shapes.benchmark("val", n, seed)]


def jsonl_val(path: str | Path) -> list[ValSample]:
    rows, _ = jsonl_rows(path, ("image", "question"), "validation")
    return [ValSample(load_image(r["image"]), r["question"], r.get("answer")) for r in rows]


class ScheduleScorer:
    """``scorer(counts) -> score`` on a fixed validation set (answers are cached per schedule).
    Without answers, a schedule is scored by agreement with ``reference`` (default: this input's
    own answers with no LLM pruning; pass the full-token answers when the input is vision-pruned)."""

    def __init__(self, model, processor, template: str, samples: list[ValSample], batch_size: int = 16,
                 max_new_tokens: int = 4, vision_keep: int | None = None, reference: list[str] | None = None):
        self.ref = ReferencePipeline(model, processor, vision_keep=vision_keep, template=template)
        self.samples = samples
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.labelled = all(s.answer is not None for s in samples)
        self.metric = "accuracy" if self.labelled else "agreement with the full-token model"
        self._prepared = None
        self.reference = None if self.labelled else (reference or self.answers(Schedule.none()))

    def _batches(self):
        if self._prepared is None:  # vision + prompt embedding once; only the LLM depends on the schedule
            self._prepared = []
            for s in range(0, len(self.samples), self.batch_size):
                chunk = self.samples[s:s + self.batch_size]
                self._prepared.append(self.ref.prepare([c.image for c in chunk], [c.question for c in chunk]))
        return self._prepared

    @torch.no_grad()
    def answers(self, schedule: Schedule) -> list[str]:
        from .llm import generate

        tok = self.ref.tokenizer
        out = []
        for prep in self._batches():
            tokens, _ = generate(self.ref.model, prep.inputs_embeds, prep.attention_mask, prep.image_mask, schedule,
                                 max_new_tokens=self.max_new_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id, position_ids=prep.position_ids)
            out += [normalise(tok.decode(t, skip_special_tokens=True)) for t in tokens]
        return out

    def hits(self, counts) -> np.ndarray:
        """Per validation sample: whether the schedule's answer is right (or agrees)."""
        got = self.answers(Schedule.per_layer(counts))
        gold = [s.answer for s in self.samples] if self.labelled else self.reference
        return np.asarray([a == b for a, b in zip(got, gold)], dtype=bool)

    def __call__(self, counts) -> float:
        return float(self.hits(counts).mean())


@torch.no_grad()
def layer_scores(ref: ReferencePipeline, images, prompts) -> np.ndarray:
    """``[B, layers, n_image]``: each layer's last-token attention over the image tokens (head mean)."""
    from .select import image_scores

    prep = ref.prepare(images, prompts)
    decoder = ref.model.model.language_model
    hidden = prep.inputs_embeds
    valid = prep.attention_mask.bool()
    starts = prep.image_mask.long().argmax(-1)
    n = int(prep.image_mask[0].sum())
    q = prep.attention_mask.shape[1] - 1  # left padding: the last token is the last valid one
    query = torch.full((hidden.shape[0],), q)
    rotary = decoder.rotary_emb(hidden, prep.position_ids)
    mask = _causal(valid, decoder, hidden.dtype)
    out = []
    for layer in decoder.layers:
        probs = last_query_attention(layer, hidden, rotary, valid, query)
        out.append(image_scores(probs, starts, n).numpy())
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=prep.position_ids)
    return np.stack(out, axis=1)


def _causal(valid, decoder, dtype):
    from .llm import causal_mask, for_attention

    return for_attention(causal_mask(valid), decoder, dtype)


def rank_similarity(ref: ReferencePipeline, samples: list[ValSample], batch_size: int = 8,
                    progress: bool = True) -> dict:
    """Mean Kendall τ between every pair of layers' image-token rankings, over the samples."""
    taus = []
    bar = tqdm(total=len(samples), desc="ranks", unit="sample", disable=not progress)
    for s in range(0, len(samples), batch_size):
        chunk = samples[s:s + batch_size]
        scores = layer_scores(ref, [c.image for c in chunk], [c.question for c in chunk])
        for row in scores:
            n_layers = row.shape[0]
            m = np.eye(n_layers)
            for i in range(n_layers):
                for j in range(i + 1, n_layers):
                    m[i, j] = m[j, i] = kendall_tau(row[i], row[j])
            taus.append(m)
        bar.update(len(chunk))
    bar.close()
    mean = np.nanmean(np.stack(taus), axis=0)
    n_layers = mean.shape[0]
    adjacent = [float(mean[i, i + 1]) for i in range(n_layers - 1)]
    return {"layers": n_layers, "samples": len(samples), "kendall_tau": mean.round(4).tolist(),
            "adjacent": adjacent, "mean_excluding_layer0": float(mean[1:, 1:][np.triu_indices(n_layers - 1, 1)].mean())
            if n_layers > 2 else None}


def plot_heatmap(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(result["kendall_tau"])
    fig, ax = plt.subplots(figsize=(5, 4.2))
    im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="Kendall τ")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
