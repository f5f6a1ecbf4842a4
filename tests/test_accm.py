"""ACCM: beam search, caption model, selector, self-supervised selection, bundle parity."""

import numpy as np
import pytest
import torch

from accm.compensation.compensator import Compensator
from accm.data import shapes
from accm.models.beam import beam_search, log_softmax
from accm.models.caption import CaptionModel
from accm.models.selector import Selector
from accm.pruning.reference import ReferencePipeline
from accm.train.accm import AccmRecipe, caption_config, kl, train_accm

from .conftest import loaded_model, random_llava


class ToyLM:
    """A fixed-table 'model': next-token logits depend on (last token, length)."""

    def __init__(self, vocab=7, seed=0):
        self.table = np.random.default_rng(seed).normal(size=(vocab, 20, vocab))

    def logits(self, seq):
        return self.table[seq[-1] if seq else 0, len(seq)]


def test_beam_search_with_one_beam_is_greedy_and_beams_are_sorted():
    lm = ToyLM()
    rows = {"seqs": [[]]}

    def step(tokens, parents):
        rows["seqs"] = [rows["seqs"][p] + [int(t)] for t, p in zip(tokens, parents)]
        return np.stack([lm.logits(s) for s in rows["seqs"]])

    first = np.stack([lm.logits([])])
    out = beam_search(first, step, beams=1, max_tokens=6, stop_ids={6}, pad_id=0)
    greedy = []
    for _ in range(6):
        tok = int(np.argmax(lm.logits(greedy)))
        greedy.append(tok)
        if tok == 6:
            break
    assert out[0][0].tokens == greedy

    rows["seqs"] = [[]]
    out = beam_search(first, step, beams=3, max_tokens=6, stop_ids={6}, pad_id=0)
    scores = [b.score for b in out[0]]
    assert scores == sorted(scores, reverse=True) and len(out[0]) == 3
    # each returned beam's score is its mean log-probability under the model
    for b in out[0]:
        seq, total = [], 0.0
        for t in b.tokens:
            total += log_softmax(lm.logits(seq)[None])[0, t]
            seq.append(t)
        assert b.score == pytest.approx(total / len(b.tokens))


def test_beam_search_ties_go_to_the_lower_token():
    flat = np.zeros((1, 5))
    out = beam_search(flat, lambda t, p: np.zeros((len(t), 5)), beams=2, max_tokens=1, stop_ids=set(), pad_id=0)
    assert [b.tokens for b in out[0]] == [[0], [1]]


@pytest.fixture(scope="module")
def toy_compensator(tmp_path_factory):
    model, proc = random_llava(seed=8)
    lm = loaded_model(model, proc, tmp_path_factory.mktemp("m"))
    # the mapper reads the top-48 discarded tokens, and the caption LM attends to all of them
    recipe = AccmRecipe(max_caption_tokens=9, input_tokens=48, prefix_all_tokens=1)
    torch.manual_seed(0)
    cap = CaptionModel(caption_config(lm, recipe))
    with torch.no_grad():
        cap.lm.lm_head.weight.mul_(30)  # peaked distributions, so beams differ
    # the training default: compact texts and a learned vector per beam rank (random here, so it matters)
    sel = Selector.from_caption_lm(cap.lm, text_format="compact", rank_slots=recipe.beams)
    with torch.no_grad():
        sel.rank.normal_(0, 1.0)
    comp = Compensator(cap, sel, proc.tokenizer)
    return lm, comp


def test_cached_beam_search_equals_cache_free_recomputation(toy_compensator, scene_images):
    lm, comp = toy_compensator
    ref = ReferencePipeline(lm.model, lm.processor, vision_keep=18)
    vis = ref.vision(ref.pixel_values(scene_images[:2]))
    questions = ["what color is the star ?", "is there a red cross ?"]
    beams = comp.candidates(vis.discarded, vis.discarded_index, vis.discarded_scores, questions)
    cap = comp.caption
    prefix = cap.mapper(vis.discarded, vis.discarded_index, vis.discarded_scores.float())
    qids = comp.question_ids(questions)
    for b in range(2):
        for beam in beams[b]:  # replay each beam without a cache: its score must match
            total, seq = 0.0, []
            for t in beam.tokens:
                embeds, mask, pos = cap.prompt_embeds([qids[b]], prefix[b:b + 1])
                if seq:
                    embeds = torch.cat([embeds, cap.embed(torch.tensor([seq]))], 1)
                    mask = torch.cat([mask, torch.ones(1, len(seq), dtype=torch.long)], 1)
                    pos = (mask.cumsum(-1) - 1).clamp(min=0)
                with torch.no_grad():
                    logits = cap.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits[0, -1]
                total += float(torch.log_softmax(logits.double(), -1)[t])
                seq.append(t)
            assert beam.score == pytest.approx(total / len(beam.tokens), abs=1e-5)
    assert len({tuple(b.tokens) for b in beams[0]}) == 3


def test_caption_and_selector_round_trip(toy_compensator, tmp_path):
    _, comp = toy_compensator
    comp.save(tmp_path)
    again = Compensator.load(tmp_path, comp.tokenizer)
    for a, b in zip(comp.caption.state_dict().values(), again.caption.state_dict().values()):
        assert torch.equal(a, b)
    ids, mask = comp.selector_inputs(["q ?"], [["a", "b b", "c ."]])
    with torch.no_grad():
        assert torch.equal(comp.selector(torch.from_numpy(ids), torch.from_numpy(mask)),
                           again.selector(torch.from_numpy(ids), torch.from_numpy(mask)))


def test_selector_text_encoder_is_frozen(toy_compensator):
    import copy

    _, comp = toy_compensator
    sel = copy.deepcopy(comp.selector)  # the fixture is shared: train a copy
    before = {k: v.clone() for k, v in sel.encoder.state_dict().items()}
    opt = torch.optim.SGD([p for p in sel.parameters() if p.requires_grad], lr=1.0)
    ids, mask = comp.selector_inputs(["q ?", "r ?"], [["a", "b", "c"], ["d", "e", "f"]])
    loss = torch.nn.functional.cross_entropy(sel(torch.from_numpy(ids), torch.from_numpy(mask)), torch.tensor([0, 2]))
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in sel.encoder.state_dict().items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in sel.score.parameters())


def test_selector_rank_slots_tell_identical_candidates_apart_by_beam_order(toy_compensator):
    _, comp = toy_compensator
    blind = Selector.from_caption_lm(comp.caption.lm, text_format="compact").eval()
    ranked = Selector.from_caption_lm(comp.caption.lm, text_format="compact", rank_slots=3).eval()
    with torch.no_grad():
        ranked.rank.normal_(0, 1.0)
        ids, mask = (torch.from_numpy(a) for a in comp.selector_inputs(["q ?"], [["a b", "a b", "a b"]]))
        flat = blind(ids, mask)[0]
        by_rank = ranked(ids, mask)[0]
    assert torch.allclose(flat, flat[0].expand(3))  # order-blind (the paper's): one text, one score
    assert not torch.allclose(by_rank, by_rank[0].expand(3))


def test_selector_text_formats():
    from accm.models.caption_text import selector_text

    assert selector_text("how many red objects are there ?", "c4 red star .", "compact") == \
        "how many red objects are there ? c4 red star ."
    paper = selector_text("q ?", "c .")
    assert paper.startswith("Question: q ?") and paper.endswith("Supplemental information for questions: c .")


def test_the_compensator_encodes_candidates_in_its_selectors_format(toy_compensator):
    _, comp = toy_compensator
    ids, mask = comp.selector_inputs(["what color is at c4 ?"], [["c4 red star .", "none ."]])
    texts = [comp.tokenizer.decode(ids[0, j][mask[0, j] > 0], skip_special_tokens=True) for j in range(2)]
    assert texts[0].split() == "what color is at c4 ? c4 red star .".split()
    assert "Supplemental" not in " ".join(texts)


def test_kl_picks_the_candidate_closest_to_the_full_model():
    q = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    close = q + torch.tensor([[0.1, 0.0, 0.0], [0.0, -0.1, 0.0]])
    far = torch.zeros(2, 3)
    assert kl(q, q) == pytest.approx(0.0, abs=1e-7)
    assert kl(q, close) < kl(q, far)


def test_training_runs_gated_stages_and_stage1_loss_falls(tmp_path):
    model, proc = random_llava(seed=9)
    loaded_model(model, proc, tmp_path / "model")
    recipe = AccmRecipe(stage1_max_steps=30, stage1_batch=4, stage1_lr=3e-3, stage2_max_steps=2, stage2_batch=2,
                        log_every=10, max_caption_tokens=8, answer_tokens=2, val_samples=6, decay_steps=2,
                        input_tokens=64, prefix_all_tokens=1, stage1_cached_scenes=24)
    summary = train_accm(str(tmp_path / "model"), tmp_path / "out", tmp_path / "work", recipe)
    assert summary["device"] == "cpu"
    import json

    stage1 = [json.loads(line) for line in (tmp_path / "work" / "stage1_log.jsonl").read_text().splitlines()]
    assert stage1[-1]["loss"] < stage1[0]["loss"] and {"caption_acc", "caption_acc_k18"} <= set(stage1[0])
    assert summary["stage1"]["steps"] <= 30  # the cap, or earlier at the gate
    stage2 = [json.loads(line) for line in (tmp_path / "work" / "stage2_log.jsonl").read_text().splitlines()]
    assert stage2[0]["step"] == 0 and {"agree", "agree_no_caption_k18"} <= set(stage2[0])  # label-free val
    assert stage2[-1]["step"] == 2 and stage2[-1]["kl_best"] <= stage2[-1]["kl_mean"] + 1e-9
    # the modules written are the val-best of the logged evaluations (step 0 wins ties)
    agree = [r["agree"] for r in stage2]
    assert summary["stage2"]["shipped_step"] == stage2[int(np.argmax(agree))]["step"]
    assert summary["stage2"]["shipped_agree"] == max(agree)
    best = torch.load(tmp_path / "work" / "stage2_best.pt", weights_only=False)
    written = Selector.load(tmp_path / "out" / "selector").state_dict()
    assert all(torch.equal(written[k], v) for k, v in best["selector"].items())
    assert CaptionModel.load(tmp_path / "out" / "caption").cfg.input_tokens == 64
    assert (tmp_path / "out" / "selector").is_dir()
    # resumable: a second call finds both stages done and only writes the output again
    train_accm(str(tmp_path / "model"), tmp_path / "out", tmp_path / "work", recipe)
    assert len((tmp_path / "work" / "stage1_log.jsonl").read_text().splitlines()) == len(stage1)
    # a work directory from before the val-best file existed still resumes, and writes its last modules
    (tmp_path / "work" / "stage2_best.pt").unlink()
    again = train_accm(str(tmp_path / "model"), tmp_path / "out", tmp_path / "work", recipe)
    assert again["stage2"]["shipped_step"] == 2


def test_the_mapper_reads_only_the_top_scored_discarded_tokens():
    from accm.models.caption import CaptionConfig, Mapper, top_positions

    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.0]])
    assert top_positions(scores, 2).tolist() == [[1, 3]]  # ties to the lower position, ascending
    torch.manual_seed(0)
    mapper = Mapper(CaptionConfig(vision_dim=8, n_patches=16, hidden=16, input_tokens=2)).eval()
    feats, index = torch.randn(1, 5, 8), torch.tensor([[2, 5, 7, 9, 11]])
    with torch.no_grad():
        whole = mapper(feats, index, scores)
        picked = mapper(feats[:, [1, 3]], index[:, [1, 3]], scores[:, [1, 3]])
        other = mapper(feats[:, [1, 2]], index[:, [1, 2]], scores[:, [1, 2]])
    torch.testing.assert_close(whole, picked)
    assert not torch.allclose(whole, other)
    with pytest.raises(ValueError, match="scores"):
        mapper(feats, index)


def test_the_read_index_is_what_the_mapper_reads():
    from accm.models.caption import CaptionConfig, Mapper

    mapper = Mapper(CaptionConfig(vision_dim=8, n_patches=16, hidden=16, input_tokens=2))
    index, scores = torch.tensor([[2, 5, 7, 9, 11]]), torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.0]])
    assert mapper.read_index(index, scores).tolist() == [[5, 9]]
    mapper.input_tokens = None
    assert mapper.read_index(index, scores).tolist() == index.tolist()


def test_shapes_caption_targets_name_only_discarded_objects_the_mapper_reads():
    from accm.train.accm_data import ShapesSource

    scene = shapes.render_scene("train", 3)
    on = [np.flatnonzero(scene.patch_object == i) for i in range(len(scene.objects))]
    kept, read = on[0], np.concatenate([on[0], on[1], on[2]])  # object 0 kept; 1 and 2 read by the mapper
    described = {}
    for describe_share in (0.0, 1.0):
        image, question, target = ShapesSource(describe_share=describe_share).caption_sample(
            3, np.random.default_rng(0))
        described[describe_share] = set(shapes.parse_description(target(kept, read)))
        assert (question == shapes.DESCRIBE) == (describe_share == 1.0)
    names = {(o.cell, o.colour, o.shape) for o in scene.objects}
    assert described[1.0] == {(o.cell, o.colour, o.shape) for o in scene.objects[1:3]} and described[1.0] <= names
    assert described[0.0] <= described[1.0]  # the question's relevant objects among those


@pytest.mark.slow
def test_training_steps_on_the_7b_standin(standin2, tmp_path):
    model, proc = standin2
    loaded_model(model, proc, tmp_path / "model")
    recipe = AccmRecipe(stage1_max_steps=2, stage1_batch=2, stage2_max_steps=1, stage2_batch=1, log_every=1,
                        max_caption_tokens=4, answer_tokens=2, keeps=(18,), val_samples=2, decay_steps=1,
                        stage1_cached_scenes=0)
    summary = train_accm(str(tmp_path / "model"), tmp_path / "out", tmp_path / "work", recipe)
    cap = CaptionModel.load(tmp_path / "out" / "caption")
    assert cap.cfg.vision_dim == 1024 and cap.cfg.vocab_size >= 32002
    assert summary["caption_params"] > 0


def test_bundle_with_accm_matches_reference(toy_compensator, tmp_path):
    from accm.export.exporter import ExportConfig, export_bundle
    from accm.runtime.pipeline import Pipeline

    lm, comp = toy_compensator
    comp.save(tmp_path / "accm")
    export_bundle(None, tmp_path / "b", ExportConfig(vision_keep=18, accm=True, accm_dir=str(tmp_path / "accm")),
                  progress=False, loaded=lm)
    ref = ReferencePipeline(lm.model, lm.processor, vision_keep=18, compensator=comp)
    pipe = Pipeline(tmp_path / "b")
    samples = shapes.benchmark("test", 50, seed=5)
    for s in range(0, 50, 10):
        chunk = samples[s:s + 10]
        images = [shapes.render_scene(x.split, x.scene_index).pil() for x in chunk]
        questions = [x.question for x in chunk]
        tokens, _, prep = ref.generate_ids(images, questions, 3)
        answers = pipe.generate(images, questions, 3)
        for b, ans in enumerate(answers):
            assert ans.candidates == prep.compensation.candidates[b]
            assert ans.caption == prep.compensation.captions[b]
            assert ans.token_ids == tokens[b].tolist()[: len(ans.token_ids)]
        assert {"caption", "selection"} <= set(answers[0].timings_ms)

    # the selector's text format travels in the manifest; a re-signed bundle naming another is refused
    import json

    from accm.bundle.manifest import MANIFEST, BundleError, write_manifest

    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert manifest["accm"]["selector_text_format"] == comp.selector.cfg.text_format == "compact"
    manifest["accm"]["selector_text_format"] = "verbose"
    write_manifest(tmp_path / "b", manifest)
    with pytest.raises(BundleError, match="selector_text_format"):
        Pipeline(tmp_path / "b")


def test_caption_agreement_is_a_plain_bool():
    from accm.train.accm import _same_caption

    assert _same_caption("c4 red star , a1 blue cross .", "a1 blue cross , c4 red star .") is True
    assert _same_caption("none .", "none .") is True
    assert _same_caption("none .", "c4 red star .") is False
    assert _same_caption("c4 red star .", "none .") is False


def test_cached_stage1_batches_equal_running_the_vision_tower(tmp_path):
    """The cached-feature path prunes the same tokens, hands the caption model the same
    discarded features (to fp16 storage) and asks the same questions as running the tower."""
    from accm.train.accm_data import CachedShapesCaptions, ImageCaptions, ShapesSource

    model, proc = random_llava(seed=4)
    ref = ReferencePipeline(model, proc)
    cached = CachedShapesCaptions(model, tmp_path, "train", 6, describe_share=0.5)
    live = ImageCaptions(ShapesSource(6, describe_share=0.5), ref)
    rows = np.array([4, 1, 1])
    a = cached.batch(rows, 18, np.random.default_rng(3))
    b = live.batch(rows, 18, np.random.default_rng(3))
    assert torch.equal(a.kept_index, b.kept_index) and torch.equal(a.discarded_index, b.discarded_index)
    torch.testing.assert_close(a.discarded, b.discarded, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(a.discarded_scores, b.discarded_scores, atol=1e-4, rtol=1e-3)
    assert a.questions == b.questions
    kept, read = a.kept_index[0].numpy(), a.discarded_index[0].numpy()
    assert [t(kept, read) for t in a.targets[:1]] == [t(kept, read) for t in b.targets[:1]]


def test_lookup_guides_teach_the_two_hop_lookup_of_a_question_aware_caption():
    from accm.train.accm import Layout, guide_loss, lookup_guides

    model, proc = random_llava(seed=2)
    tok = proc.tokenizer
    question = tok("how many red objects are there ?")["input_ids"]
    caption = tok("b2 red star , c4 red circle .", add_special_tokens=False)["input_ids"]
    q_words = [tok.decode([i]).strip() for i in question]
    c_words = [tok.decode([i]).strip() for i in caption]
    read_cells = np.array(["", "c4", "b2", "", "c4"])  # the read tokens: b2's object on one, c4's on two
    layout = Layout(question_len=len(question) + 2, prefix_len=5 + 3, caption_len=len(caption))
    guides = lookup_guides(tok, question, caption, read_cells, layout)
    start, read_at = layout.caption_start, layout.question_len
    asked = [{layout.question_len - len(question) + q_words.index("red")}]
    assert [set(k.tolist()) for layer, head, _, k in guides if (layer, head) == (0, 1)] == asked * len(caption)
    t_b2, t_c4 = c_words.index("b2"), c_words.index("c4")
    picks = {(layer, head, q - start): sorted(k - read_at) for layer, head, q, k in guides if (layer, head) != (0, 1)}
    assert picks == {(1, 0, t_b2 - 1): [2], (0, 0, t_b2): [2], (0, 0, t_b2 + 1): [2],
                     (1, 0, t_c4 - 1): [1, 4], (0, 0, t_c4): [1, 4], (0, 0, t_c4 + 1): [1, 4]}
    # attention all on the keys costs nothing; spread evenly it costs log of the share
    length = layout.caption_start + layout.caption_len
    on_keys = [torch.zeros(1, 2, length, length) for _ in range(2)]
    for layer, head, q, k in guides:
        on_keys[layer][0, head, q, k] = 1.0 / len(k)
    uniform = [torch.full((1, 2, length, length), 1.0 / length) for _ in range(2)]
    assert guide_loss(on_keys, [guides]).item() == pytest.approx(0.0, abs=1e-4)
    assert guide_loss(uniform, [guides]).item() > 1.0
    # attribute lookups on their own head: a question by colour or shape looks, before each object,
    # at every object still to be named (a content match cannot tell which comes next), and each
    # read token reads the asked words; a question that names a cell is guided as before
    moved = lookup_guides(tok, question, caption, read_cells, layout, attribute_head=1)
    as_sets = lambda gs: sorted((layer, h, np.atleast_1d(q).tolist(), sorted(k.tolist()))  # noqa: E731
                                for layer, h, q, k in gs)
    extra = [(0, 1, (read_at + np.arange(5)), asked[0]),
             (1, 1, start + t_b2 - 1, read_at + np.array([2, 1, 4])),
             (1, 1, start + t_c4 - 1, read_at + np.array([1, 4]))]
    kept = [g for g in guides if g[0] == 0]
    assert as_sets(moved) == as_sets(kept + [(a, b, c, np.array(sorted(d))) for a, b, c, d in extra])
    by_cell = tok("what color is at c4 ?")["input_ids"]
    assert as_sets(lookup_guides(tok, by_cell, caption, read_cells, layout, 1)) == as_sets(
        lookup_guides(tok, by_cell, caption, read_cells, layout))
    # a guide from many query positions is one term: the mean over them
    spread = [torch.zeros(1, 2, length, length) for _ in range(2)]
    for layer, head, q, k in moved:
        rows = torch.as_tensor(np.atleast_1d(q))[:, None]
        spread[layer][0, head][rows, torch.as_tensor(k)[None, :]] = 1.0 / len(k)
    assert guide_loss(spread, [moved]).item() == pytest.approx(0.0, abs=1e-4)


def test_attribute_lookups_keep_their_weight_among_many_cell_lookups():
    from accm.train.accm import Layout, grouped_guide_loss, guide_loss, lookup_guides

    _, proc = random_llava(seed=2)
    tok = proc.tokenizer
    caption = tok("b2 red cross , c4 blue cross .", add_special_tokens=False)["input_ids"]
    read_cells = np.array(["", "c4", "b2", "", "c4"])
    by_shape = tok("how many crosses are there ?")["input_ids"]
    by_cell = tok("what color is at c4 ?")["input_ids"]
    layout = Layout(question_len=len(by_shape) + 2, prefix_len=5 + 3, caption_len=len(caption))
    # a plural shape is what a count asks for (it had no question guide before)
    crosses = layout.question_len - len(by_shape) + 3
    asked = {tuple(k.tolist()) for layer, head, _, k in lookup_guides(tok, by_shape, caption, read_cells, layout, 1)
             if (layer, head) == (0, 1)}
    assert asked == {(crosses,)}
    attribute = lookup_guides(tok, by_shape, caption, read_cells, layout, 1)
    cells = lookup_guides(tok, by_cell, caption, read_cells, layout, 1)
    length = layout.caption_start + layout.caption_len
    attention = [torch.full((8, 2, length, length), 1.0 / length) for _ in range(2)]
    for b in range(1, 8):  # seven samples whose cell lookups are already right
        for layer, head, q, k in cells:
            rows = torch.as_tensor(np.atleast_1d(q))[:, None]
            attention[layer][b, head][rows, torch.as_tensor(k)[None, :]] = 1.0 / len(k)
    batch = [attribute] + [cells] * 7
    alone = guide_loss([a[:1] for a in attention], [attribute]).item()
    assert grouped_guide_loss(attention, batch, 1).item() == pytest.approx(alone, rel=1e-5)
    assert guide_loss(attention, batch).item() < alone / 4  # the plain mean drowns it
    assert grouped_guide_loss(attention, batch, 0).item() == pytest.approx(guide_loss(attention, batch).item())


def test_an_attribute_head_the_caption_lm_lacks_is_refused_before_anything_is_written(tmp_path):
    from accm.errors import AccmUserError
    from accm.train.accm import AccmRecipe, train_accm

    with pytest.raises(AccmUserError, match="attribute-head"):
        train_accm(None, tmp_path / "out", tmp_path / "work", AccmRecipe(caption_heads=4, stage1_attribute_head=4))
    assert not (tmp_path / "work").exists()


def test_accm_train_takes_the_selector_text_format_as_a_checked_flag(capsys):
    from accm.cli.train import build_parser

    parser = build_parser()
    args = parser.parse_args(["accm", "--work", "w", "--output", "o", "--selector-text", "paper",
                              "--selector-rank", "0"])
    assert (args.selector_text, args.selector_rank) == ("paper", 0)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["accm", "--work", "w", "--output", "o", "--selector-text", "verbose"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_caption_modes_choose_which_candidate_reaches_the_llm(toy_compensator, tmp_path, scene_images):
    from accm.measure.accuracy import TorchAnswerer

    lm, comp = toy_compensator
    comp.save(tmp_path / "accm")
    questions = ["what color is at c4 ?", "how many red objects are there ?"]
    spliced = {}
    for mode in ("selected", "top", "none"):
        answerer = TorchAnswerer(str(lm.source.path), vision_keep=18, accm=True, accm_dir=str(tmp_path / "accm"),
                                 caption_mode=mode)
        seen = []
        answer = answerer._answers
        answerer._answers = lambda *a, **kw: (seen.append(a[3]), answer(*a, **kw))[1]  # noqa: B023
        answerer(scene_images[:2], questions, 2)
        spliced[mode] = seen[0]
    vis = answerer.ref.vision(answerer.ref.pixel_values(scene_images[:2]))
    expected = comp(vis.discarded, vis.discarded_index, vis.discarded_scores, questions)
    assert spliced["top"] == [c[0] for c in expected.candidates] != spliced["selected"]  # toy: not always beam 1
    assert spliced["selected"] == expected.captions
    assert spliced["none"] is None


def test_a_caption_source_replaces_accm_captions_for_the_llm(toy_compensator, scene_images):
    from accm.measure.accuracy import TorchAnswerer

    lm, _ = toy_compensator
    questions = ["what color is at c4 ?", "how many red objects are there ?"]
    calls = []

    def source(prompts, vision):
        calls.append((list(prompts), vision.kept_index.shape))
        return ["c4 red star .", "none ."]

    answerer = TorchAnswerer(str(lm.source.path), vision_keep=18, caption_source=source)
    seen = []
    answer = answerer._answers
    answerer._answers = lambda *a, **kw: (seen.append(a[3]), answer(*a, **kw))[1]
    answerer(scene_images[:2], questions, 2)
    assert calls == [(questions, (2, 18))] and seen == [["c4 red star .", "none ."]]
    assert answerer.describe["caption_source"] == "source"
    with pytest.raises(ValueError, match="vision_keep"):
        TorchAnswerer(str(lm.source.path), caption_source=source)


def test_the_lookup_diagnostic_reports_each_heads_attention_on_the_asked_object(toy_compensator, tmp_path):
    """benchmarks/accm_lookups.py on val questions, with a toy caption model."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    lm, comp = toy_compensator
    comp.save(tmp_path / "accm")
    out = tmp_path / "lookups.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "accm_lookups.py"
    subprocess.run([sys.executable, str(script), "--model", str(lm.source.path), "--accm-dir", str(tmp_path / "accm"),
                    "--n", "24", "--json", str(out)], check=True, capture_output=True)
    report = json.loads(out.read_text())
    assert report["split"] == "val" and report["accm_modules_digest"]
    families = report["families"]
    assert families and set(families) <= {"colour", "shape", "count", "exists"}
    assert 0 < sum(row["n"] for row in families.values()) <= 24
    for row in families.values():
        assert len(row["lookup_mass_by_head"]) == comp.caption.cfg.lm_heads
        assert all(0.0 <= m <= 1.0 for m in row["lookup_mass_by_head"])
        assert 0.0 <= row["first_token_right"] <= 1.0 and 0.0 <= row["first_token_probability"] <= 1.0


def test_stage1_steps_keep_every_tensor_on_the_caption_models_device(tmp_path):
    """--device cuda cannot run here: a stage 1 step (mapper, caption loss, lookup guide on an
    attribute head) runs with the caption model on PyTorch's ``meta`` device instead, where a
    tensor left on the CPU fails as it would on a GPU; what depends on the data alone (targets,
    read cells) is worked out on the CPU first."""
    from accm.models.loading import load_llava
    from accm.train.accm import _resolved, stage1_loss
    from accm.train.accm_data import CachedShapesCaptions

    model, proc = random_llava(seed=9)
    loaded_model(model, proc, tmp_path / "model")
    lm = load_llava(str(tmp_path / "model"))
    recipe = AccmRecipe(max_caption_tokens=8, input_tokens=64, prefix_all_tokens=1, stage1_attribute_head=1)
    data = CachedShapesCaptions(lm.model, tmp_path / "work", "train", 4, describe_share=0.5)
    caption = CaptionModel(caption_config(lm, recipe)).to("meta")
    batch = _resolved(data.batch(np.arange(4), 18, np.random.default_rng(0)), caption)
    assert batch.discarded.device.type == "meta" and all(isinstance(t, str) for t in batch.targets)
    assert batch.read_cells is not None and len(batch.read_cells[0]) == 64
    loss = stage1_loss(caption, lm.processor.tokenizer, batch, recipe)
    loss.backward()
    assert loss.device.type == "meta"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_accm_training_on_cuda_without_a_gpu_is_one_line_and_writes_nothing(tmp_path, capsys):
    from accm.cli.train import main

    assert main(["accm", "--work", str(tmp_path / "work"), "--output", str(tmp_path / "out"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda needs an NVIDIA GPU" in err[0]
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


@pytest.mark.torch_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of torch and an NVIDIA GPU")
def test_accm_trains_on_cuda_as_on_cpu(tmp_path):
    """Both stages on a GPU: the first logged stage 1 loss is the CPU run's (reductions differ in
    order only), stage 2 runs the reference pipeline there, and the modules written load on the CPU."""
    import json

    model, proc = random_llava(seed=9)
    loaded_model(model, proc, tmp_path / "model")
    logs = {}
    for device in ("cpu", "cuda"):
        recipe = AccmRecipe(stage1_max_steps=12, stage1_batch=4, stage1_lr=3e-3, stage2_max_steps=2, stage2_batch=2,
                            log_every=6, max_caption_tokens=8, answer_tokens=2, val_samples=6, decay_steps=2,
                            input_tokens=64, prefix_all_tokens=1, stage1_cached_scenes=24, stage1_attribute_head=1,
                            device=device)
        train_accm(str(tmp_path / "model"), tmp_path / device / "out", tmp_path / device / "work", recipe)
        logs[device] = [json.loads(line) for line in (tmp_path / device / "work" / "stage1_log.jsonl").open()]
        assert (tmp_path / device / "work" / "stage2_log.jsonl").exists()
    assert abs(logs["cpu"][0]["loss"] - logs["cuda"][0]["loss"]) <= 0.02 * abs(logs["cpu"][0]["loss"])
    comp = Compensator.load(tmp_path / "cuda" / "out", proc.tokenizer)
    assert next(comp.caption.parameters()).device.type == "cpu"
