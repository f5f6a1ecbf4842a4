"""A shape-faithful stand-in for LLaVA-1.5-7B: the real configuration, fewer layers, random weights.

CLIP ViT-L/14-336 vision tower (hidden 1024, 16 heads), 2-layer GELU projector, Vicuna-7B
decoder (hidden 4096, 32 heads, intermediate 11008, vocab 32064, ``<image>`` = 32000), the
vicuna_v1 prompt template, and a locally trained tokenizer padded so ``<image>`` is 32000.
Tests and benchmarks use it wherever real shapes matter; no hub access.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..data import shapes
from .hf_build import llava_processor
from .templates import VICUNA_V1, render
from .tokenizer import train_bpe

IMAGE_TOKEN_ID = 32000
VOCAB_SIZE = 32064


@functools.lru_cache(maxsize=1)
def standin_tokenizer():
    corpus = []
    for i in range(600):
        scene = shapes.scene_from_graph_only("train", i)
        corpus.append(shapes.describe_scene(scene))
        corpus += [render(VICUNA_V1, q.question) + " " + q.answer for q in shapes.questions_for(scene, 2)]
    return train_bpe(corpus, vocab_size=1000, image_token_id=IMAGE_TOKEN_ID)


def standin_config(num_layers: int = 2, num_vision_layers: int = 2):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    tok = standin_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=num_vision_layers,
        num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=4096, intermediate_size=11008,
        num_hidden_layers=num_layers, num_attention_heads=32, num_key_value_heads=32,
        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
        bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"),
        pad_token_id=tok.token_to_id("<pad>"), tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID,
        image_seq_length=576, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def llava_15_standin(num_layers: int = 2, seed: int = 0, num_vision_layers: int = 2, dtype=None):
    """(model, processor) with LLaVA-1.5-7B's shapes and random weights, deterministic in ``seed``."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config = standin_config(num_layers, num_vision_layers)
    model = LlavaForConditionalGeneration(config)
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    return model, llava_processor(standin_tokenizer(), VICUNA_V1)


# Model parameter names (transformers 5) → the names the llava-hf checkpoints store them under.
CHECKPOINT_PREFIXES = (
    ("lm_head.", "language_model.lm_head."),
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)
SHARD_BYTES = 5_000_000_000  # llava-1.5-7b-hf ships three shards of about this size


def checkpoint_key(name: str) -> str:
    for new, old in CHECKPOINT_PREFIXES:
        if name.startswith(new):
            return old + name[len(new):]
    raise KeyError(f"no checkpoint name for parameter {name!r}")


def _random_tensor(name: str, shape: tuple, seed: int, dtype):
    """One parameter, deterministic in (seed, name): norms 1, biases 0, the rest N(0, 0.02)."""
    import zlib

    import torch

    leaf = name.rsplit(".", 2)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    if "norm" in leaf[-2] or "layrnorm" in leaf[-2]:
        return torch.ones(shape, dtype=dtype)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.empty(shape, dtype=dtype).normal_(0.0, 0.02, generator=gen)


def write_standin_checkpoint(directory, num_layers: int = 32, num_vision_layers: int = 24, seed: int = 0,
                             shard_bytes: int = SHARD_BYTES, progress: bool = True):
    """Write the stand-in as fp16 safetensors shards in llava-1.5-7b-hf's layout, one shard in memory
    at a time (never an fp32 copy, never the whole model): the model is built on the meta device for
    its names and shapes only. Returns the directory."""
    import json

    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm
    from transformers import LlavaForConditionalGeneration

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = standin_config(num_layers, num_vision_layers)
    config.dtype = "float16"
    with torch.device("meta"):
        params = [(n, tuple(p.shape), p.numel() * 2)
                  for n, p in LlavaForConditionalGeneration(config).named_parameters()]
    shards, current, size = [], [], 0
    for entry in params:
        if current and size + entry[2] > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry[2]
    shards.append(current)
    weight_map = {}
    bar = tqdm(total=sum(p[2] for p in params), unit="B", unit_scale=True, desc="write stand-in", disable=not progress)
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape, nbytes in shard:
            tensors[checkpoint_key(name)] = _random_tensor(name, shape, seed, torch.float16)
            weight_map[checkpoint_key(name)] = file
            bar.update(nbytes)
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        del tensors
    bar.close()
    index = {"metadata": {"total_size": sum(p[2] for p in params)}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.save_pretrained(out)
    llava_processor(standin_tokenizer(), VICUNA_V1).save_pretrained(out)
    return out


def install_in_hf_cache(source, repo_id: str, revision: str) -> Path:
    """Move a checkpoint directory into the local Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``
    honoured) as snapshot ``revision`` of ``repo_id`` with ``refs/main`` pointing at it, the layout
    ``snapshot_download(repo_id, local_files_only=True)`` resolves. Returns the snapshot path."""
    import shutil

    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
