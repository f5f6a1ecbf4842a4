"""accm-tiny: the recipe of the embedded default model (a real LlavaForConditionalGeneration).

Only the *recipe* lives here (sizes, tokenizer corpus, processor); the trained checkpoint is
data shipped under ``accm/assets/accm-tiny`` and loaded like any other HF directory.
"""

from __future__ import annotations

import dataclasses

from ..data import shapes
from .templates import LLAVA_HF, render

TEMPLATE = LLAVA_HF


@dataclasses.dataclass(frozen=True)
class TinySizes:
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 160
    text_layers: int = 6
    text_heads: int = 4
    text_intermediate: int = 448
    vocab_size: int = 384  # BPE entries before <image> and <pad>


def tokenizer_corpus(n_scenes: int = 4000) -> list[str]:
    """Prompts, answers and descriptions as the model will see them, for training the BPE."""
    out = []
    for i in range(n_scenes):
        scene = shapes.scene_from_graph_only("train", i)
        caption = shapes.describe_scene(scene)
        out.append(caption)
        for q in shapes.questions_for(scene, 3):
            with_caption = i % 2 == 0
            text = render(TEMPLATE, q.question, caption if with_caption else None)
            out.append(f"{text} {q.answer}")
    out.append(" ".join(shapes.corpus_words()))
    return out


def build_tokenizer(sizes: TinySizes = TinySizes()):
    from .tokenizer import train_bpe

    return train_bpe(tokenizer_corpus(), sizes.vocab_size)


def build_config(tokenizer, sizes: TinySizes = TinySizes()):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        image_size=336,
        patch_size=14,
        hidden_size=sizes.vision_hidden,
        intermediate_size=4 * sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
        projection_dim=sizes.vision_hidden,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=sizes.text_hidden,
        intermediate_size=sizes.text_intermediate,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        num_key_value_heads=sizes.text_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.token_to_id("<s>"),
        eos_token_id=tokenizer.token_to_id("</s>"),
        pad_token_id=tokenizer.token_to_id("<pad>"),
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.token_to_id("<image>"),
        image_seq_length=576,
        projector_hidden_act="gelu",
        # the last CLIP layer feeds the LLM, so the CLS-attention layer used for vision-side
        # pruning is trained by the CLS objective (LLaVA's -2 would leave it untrained)
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
