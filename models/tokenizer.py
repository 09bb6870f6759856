"""Tokenizer and chat templates: the checkpoint's own template or LLaMA-2's `[INST]` format.

`encode_chat` returns token ids plus a per-token loss mask (1 on assistant tokens, including the end-of-turn
token that closes them), which is the prompt/response boundary the trainer needs. The mask is computed by
rendering growing prefixes of the conversation, so it holds for any template that renders a conversation
as the concatenation of its turns (ChatML, LLaMA-2, Zephyr, ...); a template that does not is reported.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

# The LLaMA-2 chat format, as used by the released configs (`chat_template: llama-2`):
# <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST] ...
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = none %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token }}[INST] "
    "{% if loop.first and system is not none %}<<SYS>>\n{{ system }}\n<</SYS>>\n\n{% endif %}"
    "{{ message['content'] | trim }} [/INST]"
    "{% elif message['role'] == 'assistant' %}"
    " {{ message['content'] | trim }} {{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

TEMPLATES = {"model": None, "llama-2": LLAMA2_TEMPLATE}


class ChatTemplateError(ValueError):
    """A conversation could not be rendered or split into prompt and response tokens."""


@dataclasses.dataclass
class EncodedChat:
    ids: list[int]
    loss_mask: list[int]  # 1 where the token is part of an assistant turn (trained on)

    @property
    def prompt_len(self) -> int:
        """Tokens before the first assistant token (for single-turn examples, the prompt)."""
        return self.loss_mask.index(1) if 1 in self.loss_mask else len(self.ids)


class ChatTokenizer:
    """A Hugging Face tokenizer plus the chat template to use (`"model"` = the checkpoint's own)."""

    def __init__(self, path: str | os.PathLike, template: str = "model"):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.template_name = template
        if template in TEMPLATES:
            self.template = TEMPLATES[template]
        elif "{%" in template or "{{" in template:
            self.template = template  # a literal Jinja template
        else:
            raise ChatTemplateError(
                f"unknown chat template {template!r}; use one of {sorted(TEMPLATES)} or Jinja"
            )
        if self.template is None and not self.tok.chat_template:
            raise ChatTemplateError(f"{path}: the tokenizer has no chat template; pass template='llama-2'")
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token

    @property
    def eos_token_id(self) -> int:
        return self.tok.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.tok.pad_token_id

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        try:
            return self.tok.apply_chat_template(
                messages,
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as e:  # jinja errors: a bad role, a missing field
            raise ChatTemplateError(f"cannot render chat: {e}") from None

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the conversation followed by the assistant generation prompt (for inference)."""
        return self._ids(self.render(messages, add_generation_prompt=True))

    def encode_chat(self, messages: list[dict[str, str]]) -> EncodedChat:
        """Token ids of a full conversation and the loss mask over its assistant turns."""
        ids: list[int] = []
        mask: list[int] = []
        for i, m in enumerate(messages):
            if m.get("role") not in ("system", "user", "assistant"):
                raise ChatTemplateError(f"message {i}: unknown role {m.get('role')!r}")
            if m["role"] != "assistant":
                continue
            before = self._ids(self.render(messages[:i], add_generation_prompt=True))
            upto = self._ids(self.render(messages[: i + 1], add_generation_prompt=False))
            if before[: len(ids)] != ids or upto[: len(before)] != before:
                raise ChatTemplateError(
                    f"message {i}: the chat template does not render turns as a prefix of the conversation"
                )
            mask += [0] * (len(before) - len(ids)) + [1] * (len(upto) - len(before))
            ids = upto
        full = self._ids(self.render(messages, add_generation_prompt=False))
        if full[: len(ids)] != ids:
            raise ChatTemplateError("the chat template does not render turns as a prefix of the conversation")
        mask += [0] * (len(full) - len(ids))
        return EncodedChat(ids=full, loss_mask=mask)

    def decode(self, ids: list[int], **kw: Any) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, **kw)
