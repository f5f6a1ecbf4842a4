"""Locally trained tokenizers in Hugging Face format (no hub access).

A Llama-style BPE (Metaspace pre-tokenizer, ``<s>``/``</s>``) trained with ``tokenizers`` on a
small corpus. The vocabulary is padded with unused tokens so that ``<image>`` lands on a chosen
id, which lets the 7B stand-in use LLaVA-1.5's real id (32000) while the tiny model stays small.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

BASE_SPECIALS = ["<unk>", "<s>", "</s>"]
IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"


def train_bpe(corpus: Iterable[str], vocab_size: int, image_token_id: int | None = None) -> Tokenizer:
    """Train a BPE of at most ``vocab_size`` entries, then append ``<image>`` and ``<pad>``.

    With ``image_token_id`` the trained vocabulary is padded with ``<unused_i>`` tokens so that
    ``<image>`` gets exactly that id; ``<pad>`` follows it.
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    # newlines are their own pieces so that a word after "\n" tokenizes like any other word
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", "isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    alphabet = sorted(set(string.printable) - set(string.whitespace) | {"▁", "\n"})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BASE_SPECIALS,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    size = tok.get_vocab_size()
    if image_token_id is not None:
        if image_token_id < size:
            raise ValueError(f"image_token_id {image_token_id} is inside the trained vocab ({size})")
        tok.add_tokens([f"<unused_{i}>" for i in range(image_token_id - size)])
    tok.add_special_tokens([IMAGE_TOKEN, PAD_TOKEN])
    # BOS is added by the tokenizer itself, so the torch-free runtime and HF agree
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    return tok


def to_hf(tok: Tokenizer, chat_template: str | None = None):
    """Wrap as a ``PreTrainedTokenizerFast`` with LLaVA's special-token roles (needs transformers)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        add_bos_token=True,
        add_eos_token=False,
        padding_side="left",
    )
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf
