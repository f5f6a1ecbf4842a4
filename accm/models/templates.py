"""Prompt templates: LLaVA-1.5's chat formats as plain strings with one ``{prompt}`` slot.

The runtime needs the template as a string (it has no Jinja chat templates); the exporter
derives it from the model's processor chat template so nothing is hard-coded per model.
"""

from __future__ import annotations

IMAGE_PLACEHOLDER = "<image>"
PROMPT_SLOT = "{prompt}"

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
#: vicuna_v1 as used by LLaVA-1.5's evaluation scripts
VICUNA_V1 = VICUNA_V1_SYSTEM + " USER: <image>\n{prompt} ASSISTANT:"
#: llava-hf/llava-1.5-*-hf's chat template (no system prompt)
LLAVA_HF = "USER: <image>\n{prompt} ASSISTANT:"

#: the ACCM splice: the caption sits between the image and the question
SPLICE_PREFIX = "additional information: "


def jinja_for(template: str) -> str:
    """A chat template (Jinja) that renders one user turn with an image exactly as ``template``."""
    head, tail = template.split(PROMPT_SLOT)
    before_image, after_image = head.split(IMAGE_PLACEHOLDER)
    esc = lambda s: s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")  # noqa: E731
    return (
        "{%- for message in messages -%}{%- if message['role'] == 'user' -%}"
        f"{{{{- '{esc(before_image)}' -}}}}"
        "{%- for item in message['content'] -%}"
        "{%- if item['type'] == 'image' -%}{{- '<image>' -}}{%- endif -%}{%- endfor -%}"
        f"{{{{- '{esc(after_image)}' -}}}}"
        "{%- for item in message['content'] -%}"
        "{%- if item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}{%- endfor -%}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{- ' ' + message['content'][0]['text'] + '</s>' -}}"
        "{%- endif -%}{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- '{esc(tail)}' -}}}}{{%- endif -%}}"
    )


def template_from_processor(processor) -> str:
    """Recover the plain template string from a processor's chat template."""
    marker = "\x00PROMPT\x00"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": marker}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if marker not in text or IMAGE_PLACEHOLDER not in text:
        raise ValueError("the processor's chat template does not render an image and a prompt")
    return text.replace(marker, PROMPT_SLOT)


def render(template: str, prompt: str, caption: str | None = None) -> str:
    """The full prompt text; with ``caption`` the ACCM splice goes before the question."""
    if caption is not None:
        prompt = f"{SPLICE_PREFIX}{caption}\n{prompt}"
    return template.replace(PROMPT_SLOT, prompt)
