"""Model-level properties of LLM-side pruning (docs/DESIGN.md "Semantics that must be exact")."""

import pytest
import torch

from accm.pruning import image_scores, select_tokens
from accm.pruning.llm import generate, prefill
from accm.pruning.reference import ReferencePipeline
from accm.pruning.schedule import Schedule

from .conftest import PROMPTS, random_llava

FASTV = Schedule.fastv(2, 64)
PER_LAYER = Schedule.per_layer([576, 576, 200, 50])


def _prep(model, processor, images, prompts):
    return ReferencePipeline(model, processor).prepare(images, prompts)


def _run(model, prep, schedule, **kw):
    return prefill(model, prep.inputs_embeds, prep.attention_mask, prep.image_mask, schedule,
                   prep.position_ids, **kw)


@pytest.fixture(scope="module")
def batch(tiny_random, scene_images):
    model, proc = tiny_random
    return _prep(model, proc, scene_images[:3], PROMPTS[:3])  # different lengths: left padding


def test_layers_before_K_are_bit_identical(tiny_random, batch):
    model, _ = tiny_random
    full = _run(model, batch, Schedule.none(), output_hidden_states=True)
    pruned = _run(model, batch, FASTV, output_hidden_states=True)
    for layer in range(2):  # inputs of layers 0 and 1, and their caches
        assert torch.equal(full.hidden_states[layer], pruned.hidden_states[layer])
        assert torch.equal(full.cache.layers[layer].keys, pruned.cache.layers[layer].keys)
        assert torch.equal(full.cache.layers[layer].values, pruned.cache.layers[layer].values)
    assert pruned.hidden_states[2].shape[1] == full.hidden_states[2].shape[1] - 576 + 64


def test_kv_cache_lengths_per_layer(tiny_random, batch):
    model, _ = tiny_random
    state = _run(model, batch, PER_LAYER)
    length = batch.inputs_embeds.shape[1]
    lengths = [state.cache.layers[i].keys.shape[2] for i in range(4)]
    assert lengths == [length, length, length - 576 + 200, length - 576 + 50]


@pytest.mark.parametrize("schedule", [FASTV, PER_LAYER], ids=["fastv", "per_layer"])
def test_inplace_equals_mask_based(tiny_random, batch, schedule):
    model, _ = tiny_random
    inplace = _run(model, batch, schedule)
    masked = _run(model, batch, schedule, mode="mask")
    last = max(inplace.kept)
    assert all(torch.equal(inplace.kept[k], masked.kept[k]) for k in inplace.kept)
    starts = batch.image_mask.long().argmax(-1)
    length = batch.inputs_embeds.shape[1]
    for b in range(batch.inputs_embeds.shape[0]):
        s = int(starts[b])
        index = torch.cat([torch.arange(s), s + inplace.kept[last][b], torch.arange(s + 576, length)])
        valid = batch.attention_mask[b, index].bool()
        assert inplace.logits.shape[1] == len(index)
        torch.testing.assert_close(inplace.logits[b][valid], masked.logits[b, index][valid], atol=1e-5, rtol=1e-5)
    # positions are the original ones: a renumbering implementation fails the comparison above
    k = inplace.kept[last].shape[1]
    assert torch.equal(inplace.positions[0, int(starts[0]):int(starts[0]) + k],
                       batch.position_ids[0, int(starts[0]) + inplace.kept[last][0]])


def test_score_comes_from_layer_K_minus_1(scene_images):
    model, proc = random_llava(attn="eager", seed=3)
    prep = _prep(model, proc, scene_images[:2], PROMPTS[:2])
    state = _run(model, prep, Schedule.fastv(2, 32))
    with torch.no_grad():
        out = model.model.language_model(inputs_embeds=prep.inputs_embeds, attention_mask=prep.attention_mask,
                                         position_ids=prep.position_ids, output_attentions=True)
    starts = prep.image_mask.long().argmax(-1)
    last = prep.attention_mask.shape[1] - 1  # left padding: the last token is the last valid one
    expected = select_tokens(image_scores(out.attentions[1][:, :, last, :], starts, 576), 32)
    other = select_tokens(image_scores(out.attentions[2][:, :, last, :], starts, 576), 32)
    assert torch.equal(state.kept[2], expected)
    assert not torch.equal(state.kept[2], other)  # the layer matters, so the test can fail


def test_cached_greedy_equals_cache_free_rerun(tiny_random, batch):
    model, _ = tiny_random
    embed = model.get_input_embeddings()
    tokens, state = generate(model, batch.inputs_embeds, batch.attention_mask, batch.image_mask, PER_LAYER,
                             max_new_tokens=6, position_ids=batch.position_ids)
    assert tokens.shape[1] == 6
    bsz = tokens.shape[0]
    for t in range(6):
        embeds = torch.cat([batch.inputs_embeds, embed(tokens[:, :t])], 1)
        mask = torch.cat([batch.attention_mask, torch.ones(bsz, t, dtype=torch.long)], 1)
        image_mask = torch.cat([batch.image_mask, torch.zeros(bsz, t, dtype=torch.bool)], 1)
        pos = torch.cat([batch.position_ids, state.next_position[:, None] + torch.arange(t)[None]], 1)
        rerun = prefill(model, embeds, mask, image_mask, PER_LAYER, pos, forced_keep=state.kept)
        assert torch.equal(rerun.last_logits.argmax(-1), tokens[:, t])


def _single_and_batched(model, proc, images, prompts, padding_side):
    singles = [_prep(model, proc, [im], [p]) for im, p in zip(images, prompts)]
    length = max(s.inputs_embeds.shape[1] for s in singles)
    parts = {k: [] for k in ("inputs_embeds", "attention_mask", "image_mask", "position_ids")}
    for s in singles:
        pad = length - s.inputs_embeds.shape[1]
        for key in parts:
            x = getattr(s, key)
            filler = torch.zeros((1, pad) + x.shape[2:], dtype=x.dtype)
            if key == "position_ids":
                filler += 1
            parts[key].append(torch.cat([filler, x] if padding_side == "left" else [x, filler], 1))
    return singles, {k: torch.cat(v) for k, v in parts.items()}


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_equals_separate_runs(tiny_random, scene_images, padding_side):
    model, proc = tiny_random
    singles, b = _single_and_batched(model, proc, scene_images[:3], PROMPTS[:3], padding_side)
    batched_tokens, batched = generate(model, b["inputs_embeds"], b["attention_mask"], b["image_mask"], PER_LAYER,
                                       max_new_tokens=5, position_ids=b["position_ids"])
    for i, s in enumerate(singles):
        tokens, state = generate(model, s.inputs_embeds, s.attention_mask, s.image_mask, PER_LAYER,
                                 max_new_tokens=5, position_ids=s.position_ids)
        for layer in state.kept:
            assert torch.equal(state.kept[layer][0], batched.kept[layer][i])
        torch.testing.assert_close(state.last_logits[0], batched.last_logits[i], atol=1e-5, rtol=1e-5)
        assert torch.equal(tokens[0], batched_tokens[i])


@pytest.mark.parametrize("schedule", [Schedule.none(), Schedule.fastv(2, 576), Schedule.fastv(1, 10_000)],
                         ids=["none", "k_eq_n", "k_gt_n"])
def test_noop_schedules_reproduce_hf_generate(tiny_random, scene_images, schedule):
    model, proc = tiny_random
    ref = ReferencePipeline(model, proc, schedule=schedule)
    ours, _, _ = ref.generate_ids(scene_images[:4], PROMPTS[:4], max_new_tokens=8)
    proc.tokenizer.padding_side = "left"
    enc = proc(images=scene_images[:4], text=[ref.template.replace("{prompt}", p) for p in PROMPTS[:4]],
               return_tensors="pt", padding=True)
    hf = model.generate(**enc, max_new_tokens=8, do_sample=False)[:, enc.input_ids.shape[1]:]
    assert torch.equal(ours[:, : hf.shape[1]], hf)
    assert hf.shape[1] == 8 and len(set(hf.flatten().tolist())) > 1  # a real sequence, not one repeated token


def test_no_image_is_a_noop(tiny_random):
    model, proc = tiny_random
    ids = torch.tensor([proc.tokenizer("USER: hello there ASSISTANT:")["input_ids"]])
    embeds = model.get_input_embeddings()(ids)
    mask = torch.ones_like(ids)
    state = prefill(model, embeds, mask, ids == model.config.image_token_index, FASTV)
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask).logits
    assert state.kept == {}
    torch.testing.assert_close(state.logits, hf, atol=1e-5, rtol=1e-5)


def test_per_layer_kept_sets_are_nested(tiny_random, batch):
    model, _ = tiny_random
    state = _run(model, batch, Schedule.per_layer([576, 400, 200, 50]))
    layers = sorted(state.kept)
    assert layers == [1, 2, 3]
    for a, b in zip(layers, layers[1:]):
        for row_a, row_b in zip(state.kept[a], state.kept[b]):
            assert set(row_b.tolist()) <= set(row_a.tolist())
            assert torch.equal(row_b, row_b.sort().values)


def test_decode_positions_after_pruning(tiny_random, batch):
    model, _ = tiny_random
    state = _run(model, batch, FASTV)
    valid_lengths = batch.attention_mask.sum(-1)
    assert torch.equal(state.next_position, valid_lengths)  # L_unpruned, not the pruned length
    starts = batch.image_mask.long().argmax(-1)
    pads = batch.attention_mask.shape[1] - valid_lengths
    for b in range(3):
        image_pos = state.positions[b, int(starts[b]):int(starts[b]) + 64]
        assert torch.equal(image_pos, int(starts[b] - pads[b]) + state.kept[2][b])


def test_errors():
    with pytest.raises(ValueError):
        Schedule.fastv(0, 64)


def test_sampling_top_k_1_is_greedy_and_seeded_sampling_repeats(tiny_random, batch):
    model, _ = tiny_random
    args = (model, batch.inputs_embeds, batch.attention_mask, batch.image_mask, FASTV)
    greedy, _ = generate(*args, max_new_tokens=4, position_ids=batch.position_ids)
    top1, _ = generate(*args, max_new_tokens=4, position_ids=batch.position_ids, do_sample=True, top_k=1,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, top1)
    a, _ = generate(*args, max_new_tokens=4, position_ids=batch.position_ids, do_sample=True,
                    generator=torch.Generator().manual_seed(7))
    b, _ = generate(*args, max_new_tokens=4, position_ids=batch.position_ids, do_sample=True,
                    generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.slow
def test_standin_7b_shapes_fastv_and_noop(standin2, scene_images):
    model, proc = standin2
    prep = _prep(model, proc, scene_images[:1], PROMPTS[:1])
    assert prep.image_mask.sum() == 576 and prep.inputs_embeds.shape[-1] == 4096
    full = _run(model, prep, Schedule.none())
    with torch.no_grad():
        hf = model(input_ids=prep.input_ids, attention_mask=prep.attention_mask,
                   pixel_values=ReferencePipeline(model, proc).pixel_values(scene_images[:1])).logits
    torch.testing.assert_close(full.logits, hf, atol=1e-4, rtol=1e-4)
    inplace = _run(model, prep, Schedule.fastv(1, 64))
    masked = _run(model, prep, Schedule.fastv(1, 64), mode="mask")
    torch.testing.assert_close(inplace.last_logits, masked.last_logits, atol=1e-4, rtol=1e-4)
    assert inplace.cache.layers[1].keys.shape[2] == prep.inputs_embeds.shape[1] - 576 + 64
