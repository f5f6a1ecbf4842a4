"""Packed training batches compute exactly what separate prompts compute in Hugging Face's own forward."""

import numpy as np
import torch

from accm.train.packing import Packer, PackItem, packed_logits


def _hf_logits(model, packer, item, features):
    """One question alone, through the HF language model with its default causal mask."""
    batch = packer.pack([item])
    inner = model.model
    embeds = inner.language_model.get_input_embeddings()(batch.input_ids.masked_fill(batch.image_slot, 0))
    projected = inner.multi_modal_projector(features[batch.image_rows, batch.image_patches])
    embeds = embeds.masked_scatter(batch.image_slot[..., None], projected)
    hidden = inner.language_model(inputs_embeds=embeds, position_ids=batch.position_ids).last_hidden_state
    return model.lm_head(hidden[batch.label_pos[:, 0], batch.label_pos[:, 1]])


def test_packed_blocks_equal_separate_prompts(tiny_random):
    model, processor = tiny_random
    from accm.models.templates import LLAVA_HF

    packer = Packer(processor.tokenizer._tokenizer, LLAVA_HF)
    torch.manual_seed(0)
    features = torch.randn(2, 576, model.config.vision_config.hidden_size)
    kept = np.sort(np.random.default_rng(0).choice(576, 40, replace=False))
    questions = ["what color is the triangle ?", "is there a red circle ?", "how many squares ?"]
    answers = ["red", "no", "two"]
    items = [PackItem(1, kept, None, questions, answers), PackItem(0, np.arange(576), "a red square .",
                                                                   questions[:2], answers[:2])]
    with torch.no_grad():
        packed = packed_logits(model, packer.pack(items), features)
        separate = torch.cat([_hf_logits(model, packer, PackItem(it.image_row, it.kept, it.caption, [q], [a]),
                                         features)
                              for it in items for q, a in zip(it.questions, it.answers)])
    assert packed.shape == separate.shape
    assert (packed - separate).abs().max() < 1e-4
