"""Conversations and the chat template: OpenAI-style ``messages`` -> token ids + loss mask.

The rendering is defined once here, both as Python (``render``) and as the Jinja ``CHAT_TEMPLATE`` saved with the
tokenizer, so Hugging Face's ``apply_chat_template`` gives identical ids:

    <|bos|><|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>
"""

from __future__ import annotations

from scalelab.lm.special_tokens import ASSISTANT, BOS, END

# Kept on one line: Jinja whitespace would otherwise leak into the rendering.
CHAT_TEMPLATE = (
    "{{ '" + BOS + "' }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '" + END + "' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + "' }}{% endif %}"
)
