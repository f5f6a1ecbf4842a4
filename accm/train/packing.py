"""Packing several questions about one image behind a shared prefix.

``[prefix (text, kept image tokens, caption)] [block 1] [block 2] …``: every block attends to
the prefix and causally to itself, and starts at the position it would have alone, so the
packed sequence computes exactly what separate prompts would (the image is paid for once).
Kept image tokens keep their original positions, as in the pruned model at inference.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..models.placement import module_device, tensors_to
from ..models.templates import render

N_PATCHES = 576


@dataclasses.dataclass
class PackItem:
    image_row: int  # row of the feature table (-1: no image features at all)
    kept: np.ndarray  # ascending patch indices shown to the LLM
    caption: str | None
    questions: list[str]
    answers: list[str]


@dataclasses.dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, S]; image slots hold the image token id
    position_ids: torch.Tensor  # [B, S]
    attention_mask: torch.Tensor  # [B, 1, S, S] bool, True = may attend
    image_rows: torch.Tensor  # [n_slots] feature-table row per image slot (row-major order)
    image_patches: torch.Tensor  # [n_slots] patch index per image slot
    image_slot: torch.Tensor  # [B, S] bool
    label_pos: torch.Tensor  # [n_labels, 2] (batch, position) predicting a target
    labels: torch.Tensor  # [n_labels] target token ids
    is_answer: torch.Tensor  # [n_labels] bool: the first answer token (not EOS)
    answer_family: list[str] = dataclasses.field(default_factory=list)
    #: [n_labels] the family of the block each label belongs to (empty without families)
    label_family: list[str] = dataclasses.field(default_factory=list)

    def to(self, device) -> PackedBatch:
        return tensors_to(self, device)


class Packer:
    def __init__(self, tokenizer, template: str):
        self.tok = tokenizer
        self.template = template
        self.image_id = tokenizer.token_to_id("<image>")
        self.eos_id = tokenizer.token_to_id("</s>")
        self.pad_id = tokenizer.token_to_id("<pad>")
        self._cache: dict[str, list[int]] = {}

    def _ids(self, text: str, special: bool = True) -> list[int]:
        key = f"{int(special)}\x00{text}"
        if key not in self._cache:
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[key] = self.tok.encode(text, add_special_tokens=special).ids
        return self._cache[key]

    def answer_ids(self, answer: str) -> list[int]:
        return self._ids(answer, special=False)

    def _item(self, item: PackItem):
        prompts = [self._ids(render(self.template, q, item.caption)) for q in item.questions]
        cut = prompts[0].index(self.image_id)
        before = prompts[0][:cut]
        rests = [p[cut + 1 :] for p in prompts]
        common = 0
        limit = min(len(r) for r in rests) - 1  # every block keeps at least one prompt token
        while common < limit and all(r[common] == rests[0][common] for r in rests):
            common += 1
        ids, pos, blk = list(before), list(range(len(before))), [0] * len(before)
        s = len(before)
        patches = np.asarray(item.kept, dtype=np.int64)
        ids += [self.image_id] * len(patches)
        pos += (s + patches).tolist()
        blk += [0] * len(patches)
        after = s + N_PATCHES
        ids += rests[0][:common]
        pos += list(range(after, after + common))
        blk += [0] * common
        labels = []  # (index in sequence, target, is_answer)
        for b, (rest, answer) in enumerate(zip(rests, item.answers), start=1):
            block = rest[common:]
            target = self.answer_ids(answer) + [self.eos_id]
            start = len(ids)
            ids += block + target[:-1]
            pos += list(range(after + common, after + common + len(block) + len(target) - 1))
            blk += [b] * (len(block) + len(target) - 1)
            for t, tid in enumerate(target):
                labels.append((start + len(block) - 1 + t, tid, t == 0, b - 1))
        return ids, pos, blk, patches, labels

    def pack(self, items: list[PackItem], families: list[list[str]] | None = None) -> PackedBatch:
        built = [self._item(it) for it in items]
        length = max(len(b[0]) for b in built)
        bsz = len(items)
        input_ids = torch.full((bsz, length), self.pad_id, dtype=torch.long)
        position_ids = torch.ones((bsz, length), dtype=torch.long)
        blocks = torch.full((bsz, length), -1, dtype=torch.long)
        rows, patches, label_pos, labels, is_answer, label_family = [], [], [], [], [], []
        for i, ((ids, pos, blk, kept, lab), item) in enumerate(zip(built, items)):
            n = len(ids)
            input_ids[i, :n] = torch.tensor(ids)
            position_ids[i, :n] = torch.tensor(pos)
            blocks[i, :n] = torch.tensor(blk)
            rows.append(torch.full((len(kept),), item.image_row, dtype=torch.long))
            patches.append(torch.from_numpy(kept))
            for p, t, a, b in lab:
                label_pos.append((i, p))
                labels.append(t)
                is_answer.append(a)
                if families:
                    label_family.append(families[i][b])
        idx = torch.arange(length)
        causal = idx[None, :] <= idx[:, None]
        same = (blocks[:, None, :] == 0) | (blocks[:, None, :] == blocks[:, :, None])
        mask = causal[None] & same & (blocks[:, None, :] >= 0)
        mask |= torch.eye(length, dtype=torch.bool)[None]  # padding attends to itself only
        fam = [f for fs in families for f in fs] if families else []
        return PackedBatch(
            input_ids, position_ids, mask[:, None], torch.cat(rows), torch.cat(patches),
            input_ids == self.image_id, torch.tensor(label_pos, dtype=torch.long),
            torch.tensor(labels, dtype=torch.long), torch.tensor(is_answer), fam, label_family,
        )


def packed_logits(model, batch: PackedBatch, features: torch.Tensor) -> torch.Tensor:
    """Logits at the label positions of a packed batch, through a HF LLaVA's own modules.

    ``features``: the feature table ``[rows, 576, D_vision]`` (unprojected vision features), on
    the batch's device (the CPU, as packed): only the tokens a batch shows go to the model's.
    """
    inner = model.model
    shown = features[batch.image_rows, batch.image_patches] if batch.image_rows.numel() else None
    batch = batch.to(module_device(model))
    embeds = inner.language_model.get_input_embeddings()(
        batch.input_ids.masked_fill(batch.image_slot, 0)
    )
    if shown is not None:
        projected = inner.multi_modal_projector(shown.to(embeds.device, embeds.dtype))
        embeds = embeds.masked_scatter(batch.image_slot[..., None], projected)
    hidden = inner.language_model(
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
    ).last_hidden_state
    picked = hidden[batch.label_pos[:, 0], batch.label_pos[:, 1]]
    return model.lm_head(picked)
