"""``accm-train accm``: train the caption model and the selector for any LLaVA-1.5 checkpoint.

Stage 1, caption pretraining: discarded tokens (after vision-side pruning to K) + the question
→ a caption (on ShapesVQA: the discarded objects the question needs; from a JSONL file: the
user's caption, the role COCO captions play in the paper).
Stage 2, self-supervised and label-free (ACCM §1.6 of the research notes): Q = the full-token
model's distribution on its own greedy answer; for each beam candidate m, P_m = the K-token
model with caption m spliced in, teacher-forced on the same answer; m* = argmin KL(Q‖P_m);
margin-weighted cross-entropy of the caption LM on m* (mapper frozen) and of the selector on
m*. The VLM itself stays frozen throughout. Deterministic and resumable.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..compensation.compensator import Compensator
from ..data.shapes import NOTHING
from ..errors import AccmUserError
from ..models.caption import CaptionConfig, CaptionModel
from ..models.caption_text import SELECTOR_FORMATS
from ..models.dims import patch_count
from ..models.loading import load_llava
from ..models.placement import module_device
from ..models.selector import Selector
from ..pruning.llm import generate, prefill
from ..pruning.reference import ReferencePipeline
from . import checkpoint
from .device import DEVICE_HELP, DEVICES, THREADS_HELP, device_name, training_device
from .gate import GatedSchedule, Plateau


@dataclasses.dataclass
class AccmRecipe:
    keeps: tuple[int, ...] = (18, 36)
    stage1_max_steps: int = 6000  # a cap: stage 1 ends at its validation gate
    stage1_batch: int = 32
    stage1_lr: float = 1e-3
    stage1_gate: float = 0.95  # val token accuracy (teacher-forced) of captions that name objects: ends stage 1
    stage1_describe_share: float = 0.5  # ShapesVQA: share of stage 1 samples that describe every read object
    stage1_attention_guide: float = 1.0  # ShapesVQA cached path: weight of the lookup-attention loss (0: off)
    stage1_attribute_head: int = 0  # >0: layer-1 head guided to what a colour/shape question asks for (0: off)
    stage1_cached_scenes: int = 8000  # ShapesVQA: scenes rendered once with cached vision features (0: on the fly)
    stage2_max_steps: int = 1500  # a cap: stage 2 ends at its validation gate
    stage2_batch: int = 8
    caption_lr: float = 1e-6  # the paper's; at 5e-5 self-training on its own beams collapsed ("none none …")
    selector_lr: float = 1e-3
    decay_steps: int = 200  # lr tail after a gate is passed
    patience: int = 4  # evaluations without improvement that count as a plateau (the gate)
    val_samples: int = 192
    answer_tokens: int = 6
    prefix_len: int = 10
    caption_hidden: int = 96
    mapper_layers: int = 1
    caption_layers: int = 2
    caption_heads: int = 4
    input_tokens: int = 0  # m: the mapper reads the m discarded tokens the CLS ranks highest (0: all)
    prefix_all_tokens: int = 0  # 1: the caption LM attends to every mapped token, not only P summary slots
    beams: int = 3
    max_caption_tokens: int = 67
    selector_hidden: int = 128
    selector_layers: int = 4
    selector_heads: int = 8
    selector_text: str = dataclasses.field(default="compact", metadata={"choices": tuple(SELECTOR_FORMATS)})
    selector_rank: int = 1  # 1: the selector learns a vector per beam rank (0: order-blind, as the paper)
    seed: int = 0
    log_every: int = 100
    threads: int = dataclasses.field(default=0, metadata={"help": THREADS_HELP})
    device: str = dataclasses.field(default="cpu", metadata={"choices": DEVICES, "help": DEVICE_HELP})


def caption_config(lm, recipe: AccmRecipe) -> CaptionConfig:
    tok = lm.processor.tokenizer
    cfg = lm.model.config
    stop = tok("x .", add_special_tokens=False)["input_ids"][-1]
    n_patches = patch_count(cfg.vision_config)
    return CaptionConfig(
        vision_dim=cfg.vision_config.hidden_size, n_patches=n_patches, vocab_size=len(tok),
        prefix_len=recipe.prefix_len, hidden=recipe.caption_hidden, mapper_layers=recipe.mapper_layers,
        mapper_heads=recipe.caption_heads, lm_layers=recipe.caption_layers, lm_heads=recipe.caption_heads,
        max_positions=recipe.max_caption_tokens + 96
        + bool(recipe.prefix_all_tokens) * (recipe.input_tokens or n_patches),
        max_caption_tokens=recipe.max_caption_tokens,
        beams=recipe.beams, input_tokens=recipe.input_tokens or None,
        prefix_all_tokens=bool(recipe.prefix_all_tokens),
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, stop_token_ids=(stop,),
    )


def _batch(source, rng, size):
    idx = rng.choice(len(source), size=size, replace=len(source) < size)
    return [source.question_sample(int(i), rng) for i in idx]


def _caption_ids(tok, text: str, cfg: CaptionConfig) -> list[int]:
    ids = tok(text, add_special_tokens=False)["input_ids"][: cfg.max_caption_tokens]
    return ids if ids and ids[-1] in cfg.stop_token_ids else ids + [cfg.eos_token_id]


def _resume(path: Path, modules: dict, opt, schedule: GatedSchedule, gate: Plateau, patience: int):
    """A stage's checkpoint, if any, loaded into its modules, optimiser, schedule and gate; returns
    the step to continue from and the gate (the recipe's patience governs, so it may be lengthened)."""
    if (state := checkpoint.load(path)) is None:
        return 0, gate
    for name, module in modules.items():
        module.load_state_dict(state[name])
    opt.load_state_dict(state["opt"])
    schedule.passed_at = state["passed_at"]
    return state["step"], Plateau(**{**state["gate"], "patience": patience})


def _log(path: Path, record: dict, bar) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    bar.write(json.dumps(record))


def _same_caption(pred: str, target: str) -> bool:
    """Captions agree: the same set of described objects, or (free text) the same words."""
    from ..data.shapes import NOTHING, parse_description

    want = set(parse_description(target))
    if want or target.strip() == NOTHING:
        return set(parse_description(pred)) == want and bool(want or pred.strip() == NOTHING)
    return pred.split() == target.split()


def _resolved(batch, caption: CaptionModel):
    """A batch with what depends on the data alone worked out here, then moved to the caption
    model's device: ShapesVQA's target functions of the kept and the mapper-read patches turned
    into strings, and the cell under each read token (for the lookup guide). Which tokens the
    mapper reads is fixed by the CLS scores, not by the caption model's weights."""
    read = caption.mapper.read_index(batch.discarded_index, batch.discarded_scores.float()).cpu().numpy()
    kept = batch.kept_index.cpu().numpy()
    targets = [t(kept[b], read[b]) if callable(t) else t for b, t in enumerate(batch.targets)]
    read_cells = None if batch.patch_cells is None else [cells[r] for cells, r in zip(batch.patch_cells, read)]
    resolved = dataclasses.replace(batch, targets=targets, read_cells=read_cells)
    return resolved.to(module_device(caption))


@torch.no_grad()
def caption_accuracy(caption: CaptionModel, tokenizer, batches: dict) -> dict:
    """Greedy captions of held-out batches (``{keep: [CaptionBatch]}``) against their targets."""
    comp = Compensator(caption, None, tokenizer)
    caption.eval()
    out = {}
    for keep, chunks in batches.items():
        hits, described, token_hits = [], [], []
        for cb in chunks:
            beams = comp.candidates(cb.discarded, cb.discarded_index, cb.discarded_scores, cb.questions, beams=1)
            for b, want in enumerate(cb.targets):
                hits.append(_same_caption(comp.decode(beams[b][0]), want))
                described.append(want.strip() != NOTHING)
            named = [b for b, want in enumerate(cb.targets) if want.strip() != NOTHING]
            if named:
                prefix = caption.mapper(cb.discarded, cb.discarded_index, cb.discarded_scores)[named]
                pred, cap, mask = caption.caption_logits(
                    [tokenizer(cb.questions[b])["input_ids"] for b in named], prefix,
                    [_caption_ids(tokenizer, cb.targets[b], caption.cfg) for b in named])
                token_hits += ((pred.argmax(-1) == cap)[mask.bool()]).tolist()
        # teacher-forced: a smooth signal while greedy captions still start with "none"
        out[f"caption_token_acc_named_k{keep}"] = float(np.mean(token_hits)) if token_hits else float("nan")
        out[f"caption_acc_k{keep}"] = float(np.mean(hits))
        # on targets that name objects (the rest are "none ."): what the caption adds
        named = [h for h, d in zip(hits, described) if d]
        out[f"caption_acc_named_k{keep}"] = float(np.mean(named)) if named else float("nan")
    out["caption_acc"] = float(np.mean([out[f"caption_acc_k{k}"] for k in batches]))
    for name in ("caption_acc_named", "caption_token_acc_named"):  # nan where no held-out caption names objects
        known = [v for v in (out[f"{name}_k{k}"] for k in batches) if not np.isnan(v)]
        out[name] = float(np.mean(known)) if known else float("nan")
    caption.train()
    return out


@dataclasses.dataclass
class Layout:
    """Where things sit in the caption LM's input ``[question (left-padded) ; prefix ; caption]``."""

    question_len: int  # padded
    prefix_len: int  # read tokens first, then the P summary slots
    caption_len: int  # padded

    @property
    def caption_start(self) -> int:
        return self.question_len + self.prefix_len


def lookup_guides(tokenizer, question_ids: list[int], caption_ids: list[int], read_cells: np.ndarray,
                  layout: Layout, attribute_head: int = 0) -> list[tuple[int, int, int, np.ndarray]]:
    """Where a caption's lookups should look, as ``(layer, head, query, keys)`` absolute positions:
    the two-hop circuit a question-aware caption needs (ShapesVQA names).

    - layer 0, head 1: every position that predicts a caption token reads the question's cell,
      colour and shape words (what to look for);
    - layer 1, head 0: the position that predicts an object's cell looks at the read tokens that
      show that object (which object is next);
    - with ``attribute_head`` > 0, a question that asks by colour or shape and names no cell (a
      match on content, not on position) is looked up on that layer-1 head instead, on the tokens
      of every object still to be named, and each read token reads the asked words (layer 0,
      head 1) so that it can tell whether it matches;
    - layer 0, head 0: the positions whose input is the object's cell or its colour (they predict
      its colour and its shape) look at the same tokens.

    ``read_cells``: the cell of the object under each read token ("" background)."""
    from ..data.shapes import CELL_NAMES, COLOURS, PLURALS, SHAPES

    start, q_pad = layout.caption_start, layout.question_len - len(question_ids)
    q_words = [tokenizer.decode([i]).strip() for i in question_ids]
    names = {*CELL_NAMES, *COLOURS, *SHAPES, *(PLURALS.values() if attribute_head else ())}
    asked = np.array([q_pad + i for i, w in enumerate(q_words) if w in names])
    words = [tokenizer.decode([i]).strip() for i in caption_ids]
    out = [(0, 1, start + t, asked) for t in range(-1, len(caption_ids) - 1)] if asked.size else []
    by_attribute = bool(asked.size) and attribute_head > 0 and not any(w in CELL_NAMES for w in q_words)
    read_at = layout.question_len
    if by_attribute:  # each read token sees what is asked, so it can tell whether it matches
        out.append((0, 1, read_at + np.arange(len(read_cells)), asked))
    named = [(t, np.flatnonzero(read_cells == w)) for t, w in enumerate(words[:-2]) if w in CELL_NAMES]
    named = [(t, on) for t, on in named if on.size]
    for k, (t, on) in enumerate(named):
        if by_attribute:  # a content match cannot tell the next object from the later ones: all that remain
            out.append((1, attribute_head, start + t - 1, np.concatenate([o for _, o in named[k:]]) + read_at))
        else:
            out.append((1, 0, start + t - 1, read_at + on))
        out += [(0, 0, start + t, read_at + on), (0, 0, start + t + 1, read_at + on)]
    return out


def _mass(weights: torch.Tensor, query, keys: np.ndarray) -> torch.Tensor:
    """Attention mass on ``keys`` from one query position, or from each of an array of them."""
    return weights[torch.as_tensor(query)][..., torch.as_tensor(keys)].sum(-1)


def guide_loss(attention: list[torch.Tensor], guides) -> torch.Tensor:
    """−log of the attention mass each guided head puts on its keys (``lookup_guides``), averaged
    over the guided positions: a direct signal for the lookups that the caption loss alone had not
    formed in 2,500 steps (the question-aware captions stayed at ``none .``; see the model card)."""
    terms = [torch.log(_mass(attention[layer][b, head], query, keys) + 1e-6).mean()
             for b, rows in enumerate(guides) for layer, head, query, keys in rows if layer < len(attention)]
    return -torch.stack(terms).mean() if terms else attention[0].new_zeros(())


def grouped_guide_loss(attention: list[torch.Tensor], guides, attribute_head: int = 0) -> torch.Tensor:
    """``guide_loss`` with the samples whose question asks by colour or shape (their lookups on
    ``attribute_head``) averaged on their own: otherwise their few terms drown among the hundreds
    of cell lookups the describe captions bring to every batch."""
    flags = [attribute_head > 0 and any(g[:2] == (1, attribute_head) for g in rows) for rows in guides]
    groups = [[rows if flag == want else [] for rows, flag in zip(guides, flags)] for want in (False, True)]
    return sum(guide_loss(attention, group) for group in groups)


def val_batches(data, caption: CaptionModel, recipe: AccmRecipe) -> dict:
    """The same held-out scenes and questions at every keep, targets resolved, in chunks of 32."""
    n = min(recipe.val_samples, len(data))
    out = {}
    for keep in recipe.keeps:
        rng = np.random.default_rng([recipe.seed, 7])
        out[keep] = [_resolved(data.batch(np.arange(s, min(s + 32, n)), keep, rng), caption) for s in range(0, n, 32)]
    return out


def stage1_loss(caption: CaptionModel, tokenizer, cb, recipe: AccmRecipe) -> torch.Tensor:
    """One stage 1 batch's loss: the captions' cross-entropy, plus (ShapesVQA) the lookup guide."""
    prefix = caption.mapper(cb.discarded, cb.discarded_index, cb.discarded_scores)
    qids = [tokenizer(q, add_special_tokens=True)["input_ids"] for q in cb.questions]
    cap_ids = [_caption_ids(tokenizer, c, caption.cfg) for c in cb.targets]
    # the guide points at read tokens, so the LM must read them (prefix_all_tokens)
    guided = recipe.stage1_attention_guide > 0 and cb.read_cells is not None and caption.cfg.prefix_all_tokens
    attention: list = []
    loss = caption.caption_loss(qids, prefix, cap_ids, attention=attention if guided else None)
    if guided:
        layout = Layout(max(len(q) for q in qids), prefix.shape[1], max(len(c) for c in cap_ids))
        head = recipe.stage1_attribute_head
        guides = [lookup_guides(tokenizer, qids[b], ids, cb.read_cells[b], layout, head)
                  for b, ids in enumerate(cap_ids)]
        loss = loss + recipe.stage1_attention_guide * grouped_guide_loss(attention, guides, head)
    return loss


def train_stage1(caption: CaptionModel, tokenizer, data, val, recipe: AccmRecipe, work: Path) -> dict:
    """Caption pretraining until the val caption accuracy reaches ``stage1_gate`` or plateaus.

    ``data``/``val``: ``accm_data.ImageCaptions`` or ``CachedShapesCaptions``."""
    params = list(caption.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.stage1_lr, weight_decay=0.01)
    schedule = GatedSchedule(recipe.stage1_lr, 100, recipe.decay_steps, recipe.stage1_max_steps)
    # gated on the captions that name objects, teacher-forced: "none ." targets are learnt at once,
    # and greedy captions keep starting with "none" long after the lookups have formed
    gate = Plateau(recipe.stage1_gate, recipe.patience, floor=0.0)
    path = work / "stage1.pt"
    step, gate = _resume(path, {"caption": caption}, opt, schedule, gate, recipe.patience)
    held = val_batches(val, caption, recipe)
    bar = tqdm(initial=step, total=recipe.stage1_max_steps, desc="accm stage 1 (captions)", unit="step")
    t0 = time.time()
    caption.train()
    metrics: dict = {}
    while not schedule.done(step):
        rng = np.random.default_rng([recipe.seed, 101, step])
        rows = rng.choice(len(data), size=recipe.stage1_batch, replace=len(data) < recipe.stage1_batch)
        cb = _resolved(data.batch(rows, recipe.keeps[step % len(recipe.keeps)], rng), caption)
        loss = stage1_loss(caption, tokenizer, cb, recipe)
        checkpoint.optimise(opt, params, loss, schedule.lr(step))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % recipe.log_every == 0 or schedule.done(step):
            metrics = caption_accuracy(caption, tokenizer, held)
            if schedule.passed_at is None and gate.update(metrics["caption_token_acc_named"]):
                schedule.pass_gate(step)
            _log(work / "stage1_log.jsonl", {"step": step, "loss": loss.item(), **metrics, "lr": schedule.lr(step),
                                             "gate_passed_at": schedule.passed_at,
                                             "elapsed_s": round(time.time() - t0, 1)}, bar)
            checkpoint.save(path, caption=caption.state_dict(), opt=opt.state_dict(), step=step,
                            passed_at=schedule.passed_at, gate=gate.state())
    bar.close()
    caption.eval()
    return {"steps": step, "gate_passed_at": schedule.passed_at, "reached_target": gate.best >= recipe.stage1_gate,
            **metrics}


def teacher_forced_logits(ref: ReferencePipeline, images, questions, answers: list[list[int]], captions=None,
                          vision=None) -> list[torch.Tensor]:
    """Per sample ``[T_b, V]``: the logits predicting each answer token, the answer fed back in."""
    prep = ref.prepare(images, questions, captions, vision=vision)
    bsz, length = prep.attention_mask.shape
    t_max = max(len(a) for a in answers)
    ans = torch.full((bsz, t_max), ref.tokenizer.pad_token_id, dtype=torch.long)
    amask = torch.zeros((bsz, t_max), dtype=torch.long)
    for b, a in enumerate(answers):
        ans[b, : len(a)] = torch.tensor(a)
        amask[b, : len(a)] = 1
    device = prep.attention_mask.device
    ans, amask = ans.to(device), amask.to(device)
    start = torch.where(prep.attention_mask > 0, prep.position_ids, -1).max(1).values + 1
    embeds = torch.cat([prep.inputs_embeds, ref.model.get_input_embeddings()(ans)], 1)
    mask = torch.cat([prep.attention_mask, amask], 1)
    pos = torch.cat([prep.position_ids, start[:, None] + torch.arange(t_max, device=device)[None]], 1)
    image_mask = torch.cat([prep.image_mask, torch.zeros_like(amask, dtype=torch.bool)], 1)
    logits = prefill(ref.model, embeds, mask, image_mask, ref.schedule, pos).logits
    return [logits[b, length - 1: length - 1 + len(a)] for b, a in enumerate(answers)]


def kl(q_logits: torch.Tensor, p_logits: torch.Tensor) -> torch.Tensor:
    """KL(Q‖P) per answer token, averaged over the answer."""
    q = F.log_softmax(q_logits.float(), -1)
    p = F.log_softmax(p_logits.float(), -1)
    return (q.exp() * (q - p)).sum(-1).mean()


def _answers(ref: ReferencePipeline, images, questions, captions, tokens: int, vision=None) -> list[str]:
    from ..data.answers import normalise

    tok = ref.tokenizer
    prep = ref.prepare(images, questions, captions, vision=vision)
    out, _ = generate(ref.model, prep.inputs_embeds, prep.attention_mask, prep.image_mask, ref.schedule,
                      max_new_tokens=tokens, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      position_ids=prep.position_ids)
    return [normalise(tok.decode(t, skip_special_tokens=True)) for t in out]


class Agreement:
    """Label-free validation: how often the pruned model with the selected caption gives the
    full-token model's own answer (and, for scale, how often it does with no caption)."""

    def __init__(self, lm, samples, keeps, tokens: int):
        self.ref = ReferencePipeline(lm.model, lm.processor, template=lm.template)
        self.samples, self.keeps, self.tokens = samples, keeps, tokens
        self.full = []
        for s in range(0, len(samples), 32):
            chunk = samples[s:s + 32]
            self.full += _answers(self.ref, [c[0] for c in chunk], [c[1] for c in chunk], None, tokens)

    @torch.no_grad()
    def __call__(self, comp: Compensator, with_baseline: bool = False) -> dict:
        out = {}
        for keep in self.keeps:
            self.ref.vision_keep = keep
            agree, plain = [], []
            for s in range(0, len(self.samples), 32):
                chunk = self.samples[s:s + 32]
                images, questions = [c[0] for c in chunk], [c[1] for c in chunk]
                vis = self.ref.vision(self.ref.pixel_values(images))
                captions = comp(vis.discarded, vis.discarded_index, vis.discarded_scores, questions).captions
                got = _answers(self.ref, images, questions, captions, self.tokens, vision=vis)
                agree += [a == f for a, f in zip(got, self.full[s:s + 32])]
                if with_baseline:
                    bare = _answers(self.ref, images, questions, None, self.tokens, vision=vis)
                    plain += [a == f for a, f in zip(bare, self.full[s:s + 32])]
            out[f"agree_k{keep}"] = float(np.mean(agree))
            if with_baseline:
                out[f"agree_no_caption_k{keep}"] = float(np.mean(plain))
        out["agree"] = float(np.mean([out[f"agree_k{k}"] for k in self.keeps]))
        return out


def train_stage2(lm, comp: Compensator, source, val, recipe: AccmRecipe, work: Path) -> dict:
    """Self-supervised, label-free: until the val agreement with the full-token model plateaus."""
    tok = lm.processor.tokenizer
    full = ReferencePipeline(lm.model, lm.processor, template=lm.template)
    pruned = ReferencePipeline(lm.model, lm.processor, template=lm.template)
    caption, selector = comp.caption, comp.selector
    caption.mapper.requires_grad_(False)
    cap_params = list(caption.lm.parameters())
    sel_params = [p for p in selector.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": cap_params, "lr": recipe.caption_lr},
                             {"params": sel_params, "lr": recipe.selector_lr}], weight_decay=0.01)
    peaks = (recipe.caption_lr, recipe.selector_lr)
    schedule = GatedSchedule(1.0, 50, recipe.decay_steps, recipe.stage2_max_steps)  # a multiplier of each peak
    gate = Plateau(1.0, recipe.patience)
    path = work / "stage2.pt"
    step, gate = _resume(path, {"caption": caption, "selector": selector}, opt, schedule, gate, recipe.patience)
    rng0 = np.random.default_rng([recipe.seed, 8])
    val_samples = [val.question_sample(int(i), rng0) for i in range(min(recipe.val_samples, len(val)))]
    agreement = Agreement(lm, val_samples, recipe.keeps, recipe.answer_tokens)
    metrics = agreement(comp, with_baseline=True) if step == 0 else {}
    # the modules shipped are the best on val agreement (self-training can degrade them), not the last
    best_path = work / "stage2_best.pt"
    if step == 0:
        _log(work / "stage2_log.jsonl", {"step": 0, **metrics}, tqdm(disable=True))
        checkpoint.save(best_path, caption=caption.state_dict(), selector=selector.state_dict(), step=0,
                        agree=metrics["agree"])
    best = checkpoint.load(best_path)  # None: a work directory from before best modules were kept
    best_agree = best["agree"] if best else float("-inf")
    bar = tqdm(initial=step, total=recipe.stage2_max_steps, desc="accm stage 2 (self-supervised)", unit="step")
    t0 = time.time()
    stats: list[dict] = []
    while not schedule.done(step):
        rng = np.random.default_rng([recipe.seed, 202, step])
        batch = _batch(source, rng, recipe.stage2_batch)
        images, questions = [b[0] for b in batch], [b[1] for b in batch]
        pruned.vision_keep = recipe.keeps[step % len(recipe.keeps)]
        caption.eval()
        with torch.no_grad():
            q_steps: list[torch.Tensor] = []
            prep = full.prepare(images, questions)
            tokens, _ = generate(lm.model, prep.inputs_embeds, prep.attention_mask, prep.image_mask,
                                 max_new_tokens=recipe.answer_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id, position_ids=prep.position_ids,
                                 step_logits=q_steps)
            answers, q_logits = [], []
            for b in range(len(batch)):
                seq = tokens[b].tolist()
                n = seq.index(tok.eos_token_id) + 1 if tok.eos_token_id in seq else len(seq)
                answers.append(seq[:n])
                q_logits.append(torch.stack([s[b] for s in q_steps[:n]]))
            vis = pruned.vision(pruned.pixel_values(images))
            beams = comp.candidates(vis.discarded, vis.discarded_index, vis.discarded_scores, questions)
            texts = [[comp.decode(bm) for bm in row] for row in beams]
            m = len(texts[0])
            kls = torch.zeros(len(batch), m)
            for j in range(m):
                p_logits = teacher_forced_logits(pruned, images, questions, answers,
                                                 [row[j] for row in texts], vision=vis)
                kls[:, j] = torch.stack([kl(q_logits[b], p_logits[b]) for b in range(len(batch))]).cpu()
        best = kls.argmin(1)
        margin = kls.mean(1) - kls.min(1).values
        lam = 4.0 * float(margin.mean())
        caption.train()
        prefix = caption.mapper(vis.discarded.float(), vis.discarded_index, vis.discarded_scores.float()).detach()
        qids = comp.question_ids(questions)
        targets = [beams[b][int(best[b])].tokens for b in range(len(batch))]
        cap_loss = caption.caption_loss(qids, prefix, targets)
        ids, mask = comp.selector_inputs(questions, texts)
        logits = selector(*comp.selector_tensors(ids, mask))
        sel_loss = F.cross_entropy(logits, best.to(logits.device))
        chosen = logits.detach().argmax(1).cpu()
        loss = lam * (cap_loss + sel_loss)
        for g, peak in zip(opt.param_groups, peaks):
            g["lr"] = peak * schedule.lr(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(cap_params + sel_params, 1.0)
        opt.step()
        step += 1
        bar.update(1)
        stats.append({"kl_best": float(kls.min(1).values.mean()), "kl_mean": float(kls.mean()),
                      "kl_selected": float(kls[torch.arange(len(batch)), chosen].mean()),
                      "selector_hits": float((chosen == best).float().mean()), "lambda": lam})
        bar.set_postfix(kl_best=f"{stats[-1]['kl_best']:.3f}", sel=f"{stats[-1]['selector_hits']:.2f}")
        if step % recipe.log_every == 0 or schedule.done(step):
            caption.eval()
            selector.eval()
            metrics = agreement(comp)
            selector.train()
            if schedule.passed_at is None and gate.update(metrics["agree"]):
                schedule.pass_gate(step)
            rec = {"step": step, **{k: float(np.mean([s[k] for s in stats])) for k in stats[0]}, **metrics,
                   "gate_passed_at": schedule.passed_at, "elapsed_s": round(time.time() - t0, 1)}
            stats = []
            _log(work / "stage2_log.jsonl", rec, bar)
            if metrics["agree"] > best_agree:
                best_agree = metrics["agree"]
                checkpoint.save(best_path, caption=caption.state_dict(), selector=selector.state_dict(), step=step,
                                agree=best_agree)
            checkpoint.save(path, caption=caption.state_dict(), selector=selector.state_dict(),
                            opt=opt.state_dict(), step=step, passed_at=schedule.passed_at, gate=gate.state())
    bar.close()
    if (best := checkpoint.load(best_path)) is not None:
        caption.load_state_dict(best["caption"])
        selector.load_state_dict(best["selector"])
    caption.eval()
    selector.eval()
    return {"steps": step, "gate_passed_at": schedule.passed_at, "shipped_step": best["step"] if best else step,
            "shipped_agree": best["agree"] if best else metrics.get("agree"), **metrics}


def _stage1_data(lm, captions, recipe: AccmRecipe, work: Path):
    """(train, val) stage 1 batches: the user's captions through the vision tower each step, or
    ShapesVQA's (cached features when ``stage1_cached_scenes`` is set)."""
    from .accm_data import CachedShapesCaptions, ImageCaptions, ShapesSource, held_out

    ref = ReferencePipeline(lm.model, lm.processor, template=lm.template)
    if captions is not None:
        return tuple(ImageCaptions(s, ref) for s in held_out(captions))
    if recipe.stage1_cached_scenes:
        share = recipe.stage1_describe_share
        workers = recipe.threads or None  # --threads also caps the rendering processes
        return (CachedShapesCaptions(lm.model, work, "train", recipe.stage1_cached_scenes, share, workers),
                CachedShapesCaptions(lm.model, work, "val", min(recipe.val_samples, 400), workers=workers))
    return (ImageCaptions(ShapesSource(describe_share=recipe.stage1_describe_share), ref),
            ImageCaptions(ShapesSource(400, "val"), ref))


def train_accm(model: str | None, output: Path, work: Path, recipe: AccmRecipe | None = None,
               questions=None, captions=None) -> dict:
    """Train both modules for ``model`` and write them to ``output`` (``caption/``, ``selector/``).

    Validation: ShapesVQA's val split by default; with user data, its last tenth is held out.
    """
    from .accm_data import ShapesSource, held_out

    recipe = recipe or AccmRecipe()
    device = training_device(recipe.device)  # before anything is written
    if not 0 <= recipe.stage1_attribute_head < recipe.caption_heads:
        raise AccmUserError(f"--stage1-attribute-head must name one of the caption LM's {recipe.caption_heads} heads "
                            "(1 or more; 0: off)")
    work, output = Path(work), Path(output)
    work.mkdir(parents=True, exist_ok=True)
    (work / "accm_recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=1))
    t0 = time.time()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    lm = load_llava(model)
    lm.model.requires_grad_(False).to(device)
    caption = CaptionModel(caption_config(lm, recipe)).to(device)
    q_train, q_val = held_out(questions) if questions is not None else (ShapesSource(), ShapesSource(400, "val"))
    stage1 = train_stage1(caption, lm.processor.tokenizer, *_stage1_data(lm, captions, recipe, work), recipe, work)
    selector = Selector.from_caption_lm(caption.lm, recipe.selector_hidden, recipe.selector_layers,
                                        recipe.selector_heads, recipe.selector_text,
                                        recipe.beams if recipe.selector_rank else 0).to(device)
    comp = Compensator(caption, selector, lm.processor.tokenizer)
    stage2 = train_stage2(lm, comp, q_train, q_val, recipe, work)
    caption.cpu()
    selector.cpu()
    comp.save(output)
    summary = {"recipe": dataclasses.asdict(recipe), "seconds_this_run": round(time.time() - t0, 1),
               "device": device_name(device),
               "stage1": stage1, "stage2": stage2,
               "caption_params": sum(p.numel() for p in caption.parameters()),
               "selector_params": sum(p.numel() for p in selector.parameters())}
    (output / "training.json").write_text(json.dumps(summary, indent=1))
    return summary
