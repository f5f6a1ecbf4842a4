"""Vision-side pruning: CLS-query attention top-k inside the CLIP tower."""

import pytest
import torch

from accm.pruning import select_tokens
from accm.pruning.reference import ReferencePipeline
from accm.pruning.vision import vision_features

from .conftest import random_llava


@pytest.fixture(scope="module")
def eager_model():
    model, proc = random_llava(seed=5)
    model.model.vision_tower.config._attn_implementation = "eager"
    return model, proc


def _pixels(model, proc, images):
    return ReferencePipeline(model, proc).pixel_values(images)


@pytest.mark.parametrize("layer", [None, 0])
def test_scores_are_hf_cls_attention_head_mean(eager_model, scene_images, layer):
    model, proc = eager_model
    pv = _pixels(model, proc, scene_images[:2])
    out = vision_features(model, pv, keep=18, score_layer=layer)
    with torch.no_grad():
        attn = model.model.vision_tower(pv, output_attentions=True).attentions
    idx = len(attn) - 1 if layer is None else layer
    expected = attn[idx][:, :, 0, 1:].double().mean(1)
    torch.testing.assert_close(out.scores, expected, atol=1e-7, rtol=1e-6)
    assert torch.equal(out.kept_index, select_tokens(out.scores, 18))


def test_kept_and_discarded_partition_in_raster_order(tiny_random, scene_images):
    model, proc = tiny_random
    pv = _pixels(model, proc, scene_images[:3])
    out = vision_features(model, pv, keep=64)
    assert out.kept.shape == (3, 64, model.config.text_config.hidden_size)
    assert out.discarded.shape == (3, 512, model.config.vision_config.hidden_size)
    for b in range(3):
        kept, dropped = out.kept_index[b].tolist(), out.discarded_index[b].tolist()
        assert kept == sorted(kept) and dropped == sorted(dropped)
        assert sorted(kept + dropped) == list(range(576))
    with torch.no_grad():
        feats = model.model.vision_tower(pv, output_hidden_states=True).hidden_states[-2][:, 1:]
        full = model.model.multi_modal_projector(feats)
    gather = lambda x, idx: x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
    torch.testing.assert_close(out.kept, gather(full, out.kept_index))
    torch.testing.assert_close(out.discarded, gather(feats, out.discarded_index))


def test_keep_all_equals_llava_image_features(tiny_random, scene_images):
    model, proc = tiny_random
    pv = _pixels(model, proc, scene_images[:2])
    out = vision_features(model, pv, keep=None)
    with torch.no_grad():
        hf = model.model.get_image_features(pixel_values=pv, vision_feature_layer=-2,
                                            vision_feature_select_strategy="default")
    hf = torch.stack(list(hf.pooler_output)) if hasattr(hf, "pooler_output") else hf
    torch.testing.assert_close(out.kept, hf.reshape(out.kept.shape))
    assert out.discarded.shape[1] == 0
    assert vision_features(model, pv, keep=10_000).kept.shape[1] == 576  # capped


def test_random_keep_is_seeded_and_differs_from_attention(tiny_random, scene_images):
    model, proc = tiny_random
    pv = _pixels(model, proc, scene_images[:1])
    a = vision_features(model, pv, 18, generator=torch.Generator().manual_seed(1)).kept_index
    b = vision_features(model, pv, 18, generator=torch.Generator().manual_seed(1)).kept_index
    c = vision_features(model, pv, 18).kept_index
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.slow
def test_standin_clip_large_shapes(standin2, scene_images):
    model, proc = standin2
    pv = _pixels(model, proc, scene_images[:1])
    out = vision_features(model, pv, keep=64)
    assert out.kept.shape == (1, 64, 4096) and out.discarded.shape == (1, 512, 1024)
