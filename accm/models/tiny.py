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
    """Prompts, answers, descriptions and short captions as the model will see them, for
    training the BPE."""
    out = []
    for i in range(n_scenes):
        scene = shapes.scene_from_graph_only("train", i)
        if i % 4 == 0:
            out += [f"{render(TEMPLATE, k)} {v}" for k, v in shapes.dense_targets(scene.objects).items()]
        else:
            out.append(shapes.describe_scene(scene))
        for j, q in enumerate(shapes.questions_for(scene, 4)):
            relevant = shapes.relevant_objects(q.key, scene.objects)
            caption = shapes.describe_objects(relevant) if (i + j) % 2 == 0 else None
            out.append(f"{render(TEMPLATE, q.question, caption)} {q.answer}")
    out.append(" ".join(shapes.corpus_words()))
    return out


def build_tokenizer(sizes: TinySizes = TinySizes()):
    from .tokenizer import train_bpe

    tok = train_bpe(tokenizer_corpus(), sizes.vocab_size)
    split = [w for w in shapes.single_token_words() if len(tok.encode(w, add_special_tokens=False).ids) != 1]
    if split:  # first-token scoring and one-hop lookups need every name to be one token
        raise ValueError(f"the tokenizer splits task names into several tokens: {split}")
    return tok


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
