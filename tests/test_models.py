"""Model resolution, the LLaVA-1.5-7B stand-in, templates and image preprocessing."""

import numpy as np
import pytest
from PIL import Image

from accm.data.preprocess import ImageSpec, preprocess
from accm.models import registry
from accm.models.hf_build import clip_image_processor
from accm.models.templates import LLAVA_HF, VICUNA_V1, render, template_from_processor


def test_resolve_local_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert registry.resolve(str(tmp_path)).path == tmp_path.resolve()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(registry.ModelNotFound, match="config.json"):
        registry.resolve(str(empty))


def test_alias_not_in_cache_says_how_to_get_it(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    # an empty cache, whatever this machine's holds (make_standin.py writes llava-1.5-7b into it)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(registry.ModelNotFound) as err:
        registry.resolve("llava-1.5-7b")
    msg = str(err.value)
    assert "llava-hf/llava-1.5-7b-hf" in msg and "download" in msg and "\n" not in msg


def test_alias_found_in_local_hf_cache(tmp_path, monkeypatch):
    snap = tmp_path / "models--llava-hf--llava-1.5-13b-hf" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    refs = tmp_path / "models--llava-hf--llava-1.5-13b-hf" / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    src = registry.resolve("llava-1.5-13b")
    assert src.path == snap and src.repo_id == "llava-hf/llava-1.5-13b-hf"


def test_unknown_model_and_missing_tiny(tmp_path, monkeypatch):
    with pytest.raises(registry.ModelNotFound, match="unknown model"):
        registry.resolve("no-such-model")
    monkeypatch.setattr(registry, "TINY_DIR", tmp_path / "nothing")
    with pytest.raises(registry.ModelNotFound, match="accm-tiny"):
        registry.resolve(None)


def test_standin_is_llava_15_7b_shaped():
    from accm.models.hf_build import llava_processor
    from accm.models.standin import standin_config, standin_tokenizer

    cfg = standin_config(num_layers=2)
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.num_attention_heads, t.intermediate_size, t.vocab_size) == (4096, 32, 11008, 32064)
    assert (v.hidden_size, v.num_attention_heads, v.image_size, v.patch_size) == (1024, 16, 336, 14)
    assert cfg.image_token_index == 32000 and cfg.vision_feature_layer == -2
    assert cfg.projector_hidden_act == "gelu"
    proc = llava_processor(standin_tokenizer(), VICUNA_V1)
    assert template_from_processor(proc) == VICUNA_V1
    enc = proc(images=Image.new("RGB", (400, 300)), text=render(VICUNA_V1, "hi"), return_tensors="np")
    assert int((enc["input_ids"] == 32000).sum()) == 576


def test_render_splices_caption_between_image_and_question():
    text = render(LLAVA_HF, "what color is the star ?", caption="red star top left .")
    assert text == "USER: <image>\nadditional information: red star top left .\nwhat color is the star ? ASSISTANT:"


MODES = [(336, 336, "RGB"), (500, 300, "RGB"), (300, 500, "RGBA"), (1, 1, "L"), (20, 2000, "RGB"),
         (3000, 40, "P"), (64, 64, "CMYK"), (77, 99, "LA"), (640, 480, "I;16"), (90, 30, "1")]


@pytest.mark.parametrize("do_pad", [False, True], ids=["crop", "pad"])
@pytest.mark.parametrize("size_mode", MODES, ids=[f"{w}x{h}-{m}" for w, h, m in MODES])
def test_preprocess_equals_hf_processor(do_pad, size_mode):
    w, h, mode = size_mode
    rng = np.random.default_rng(w * 7 + h)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, size=(h, w)).astype(np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).convert(mode)
    hf = clip_image_processor(336, do_pad)
    ours = preprocess(img, ImageSpec.from_hf(hf))
    ref = hf(images=img, return_tensors="np")["pixel_values"][0]
    assert ours.shape == ref.shape == (3, 336, 336)
    assert np.abs(ours - ref).max() <= 1e-6


def test_pad_mode_pads_with_the_mean_colour():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    spec = ImageSpec(do_pad=True)
    px = preprocess(img, spec)
    mean = np.array([int(m * 255) for m in spec.mean]) / 255
    expected = (mean - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(px[:, 0, 0], expected, atol=1e-6)  # top band is padding
