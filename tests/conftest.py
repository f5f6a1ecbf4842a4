"""Shared fixtures: small random LLaVA models built locally (no hub), and ShapesVQA images."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import functools  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    from accm.engines.gpu import cuda_device_count, gpu_available
    from accm.kernels.build import nvcc

    skips = {}
    if not gpu_available():
        skips["gpu"] = pytest.mark.skip(reason="needs an NVIDIA GPU and TensorRT")
    if cuda_device_count() == 0 or nvcc() is None:
        skips["cuda"] = pytest.mark.skip(reason="needs an NVIDIA GPU and nvcc")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


@functools.cache
def _tiny_tokenizer():
    from accm.models.tiny import tokenizer_corpus
    from accm.models.tokenizer import train_bpe

    return train_bpe(tokenizer_corpus(300), 300)


def random_llava(num_layers: int = 4, kv_heads: int = 2, seed: int = 0, attn: str = "sdpa",
                 feature_layer: int = -2):
    """A random LLaVA with the real 576-token image layout and a small GQA decoder."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from accm.models.hf_build import llava_processor
    from accm.models.templates import LLAVA_HF

    tok = _tiny_tokenizer()
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=336, patch_size=14,
                                       projection_dim=32),
        text_config=LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                                num_hidden_layers=num_layers, num_attention_heads=4,
                                num_key_value_heads=kv_heads, max_position_embeddings=1024,
                                bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
                                pad_token_id=tok.token_to_id("<pad>")),
        image_token_index=tok.token_to_id("<image>"),
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy="default",
    )
    cfg._attn_implementation = attn
    cfg.text_config._attn_implementation = attn
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # larger logits than HF's 0.02 init, so greedy tokens vary
        model.lm_head.weight.mul_(20)
    return model, llava_processor(tok, LLAVA_HF)


def saved_random_llava(directory, seed: int):
    """A random LLaVA (``random_llava``) saved as an HF checkpoint directory."""
    model, proc = random_llava(seed=seed)
    model.save_pretrained(directory)
    proc.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_random():
    return random_llava()


@pytest.fixture(scope="session")
def standin2():
    from accm.models.standin import llava_15_standin

    return llava_15_standin(num_layers=2, seed=0)


@pytest.fixture(scope="session")
def scene_images():
    from accm.data import shapes

    return [shapes.render_scene("test", i).pil() for i in range(6)]


PROMPTS = [
    "what color is the star ?",
    "how many circles are there ?",
    "is there a red cross ?",
    "what shape is in the top left ?",
    "where is the blue square relative to the green circle ?",
    "describe the picture",
]


#: bundle configurations exported once per session for the tiny random model
TINY_CONFIGS = {
    "full": (None, "none"),
    "vision64": (64, "none"),
    "fastv": (None, "fastv:2:64"),
    "vision64_layers": (64, "layers:64,64,48,16"),
}


def loaded_model(model, proc, path):
    """Save a model to ``path`` and wrap it as the exporter's LoadedModel."""
    from accm.models.loading import LoadedModel
    from accm.models.registry import ModelSource
    from accm.models.templates import template_from_processor

    model.save_pretrained(path)
    proc.save_pretrained(path)
    return LoadedModel(ModelSource(str(path), path), model, proc, template_from_processor(proc))


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory):
    """(model, processor, {config: bundle dir}) for a random 4-layer GQA LLaVA."""
    from accm.export.exporter import ExportConfig, export_bundle
    from accm.pruning.schedule import Schedule

    model, proc = random_llava(seed=11)
    root = tmp_path_factory.mktemp("tiny_bundles")
    loaded = loaded_model(model, proc, root / "model")
    out = {}
    for name, (keep, sched) in TINY_CONFIGS.items():
        export_bundle(None, root / name, ExportConfig(vision_keep=keep, schedule=Schedule.parse(sched)),
                      progress=False, loaded=loaded)
        out[name] = root / name
    return model, proc, out


@pytest.fixture(scope="session")
def runtime_bundle(tmp_path_factory):
    """The accm-tiny bundle (vision keep 64, fp32) that the torch-free runtime tests run on: the
    one ``ACCM_RUNTIME_BUNDLE`` names (CI's minimum-versions leg has no torch to export with),
    else exported here."""
    given = os.environ.get("ACCM_RUNTIME_BUNDLE")
    if given:
        return Path(given)
    pytest.importorskip("torch")
    from accm.export.exporter import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("runtime") / "tiny-64"
    export_bundle("accm-tiny", out, ExportConfig(vision_keep=64), progress=False)
    return out
