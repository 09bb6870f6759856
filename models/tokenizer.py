"""Tokenizer and chat templates: the checkpoint's own template or LLaMA-2's `[INST]` format.

`encode_chat` returns token ids plus a per-token loss mask (1 on assistant tokens, including the end-of-turn
token that closes them), which is the prompt/response boundary the trainer needs. The mask comes from the
rendered text, not from token prefixes: the conversation is rendered once, each assistant turn is located as a
character span (by rendering growing prefixes of the conversation, or, for a template that renders the last
turn differently, by searching the trimmed content), and the text is tokenized with character offsets; a token
is trained when it overlaps an assistant span. So it holds for templates that trim content or whose turn
boundaries merge into one token (a response that starts with blank lines).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from records.errors import InputError

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


class ChatTemplateError(InputError):
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
        """Token ids of a full conversation and the loss mask over its assistant turns.

        The conversation is rendered once and tokenized with character offsets; a token is trained (mask 1)
        when one of its characters lies in an assistant span of the rendered text (`assistant_spans`). Token
        boundaries need not match turn boundaries (a response that starts with blank lines merges them with
        the generation prompt's newline), so no token-prefix property of the template is required.
        """
        for i, m in enumerate(messages):
            if m.get("role") not in ("system", "user", "assistant"):
                raise ChatTemplateError(f"message {i}: unknown role {m.get('role')!r}")
            if not isinstance(m.get("content"), str):
                raise ChatTemplateError(f"message {i}: content must be a string")
        full = self.render(messages, add_generation_prompt=False)
        spans = self.assistant_spans(messages, full)
        if not self.tok.is_fast:
            raise ChatTemplateError("the loss mask needs a fast tokenizer (character offsets)")
        enc = self.tok(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        mask = [int(any(_overlaps(o, a, b) for a, b in spans)) for o in offsets]
        for k, (a, b) in enumerate(spans):
            if not any(_overlaps(o, a, b) for o in offsets):
                raise ChatTemplateError(f"assistant turn {k}: no token in the rendered response")
        return EncodedChat(ids=ids, loss_mask=mask)

    def assistant_spans(self, messages: list[dict[str, str]], full: str) -> list[tuple[int, int]]:
        """Character spans `[start, end)` of the assistant turns in `full` (the rendered conversation).

        A turn spans from the end of the conversation before it rendered with the generation prompt to the
        end of the conversation up to it (so the end-of-turn token that closes it is included). A template
        whose renderings are not text prefixes of each other (e.g. one that renders the last turn differently)
        falls back to searching the (trimmed) content and the special token that follows it.
        """
        spans: list[tuple[int, int]] = []
        cursor = 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prev: str | None = None  # None: a template that cannot render an empty conversation
            try:
                prev = self.render(messages[:i], add_generation_prompt=True)
            except ChatTemplateError:
                if i:
                    raise
            cur = self.render(messages[: i + 1], add_generation_prompt=False)
            if (
                prev is not None
                and full.startswith(cur)
                and cur.startswith(prev)
                and cursor <= len(prev) < len(cur)
            ):
                span = (len(prev), len(cur))
            else:
                span = self._search_span(full, m["content"], cursor, prev, i)
            spans.append(span)
            cursor = span[1]
        return spans

    def _search_span(self, full: str, content: str, cursor: int, prev: str | None, i: int) -> tuple[int, int]:
        text = content.strip()
        pos = full.find(text, cursor) if text else -1
        if pos < 0:
            raise ChatTemplateError(f"message {i}: the response is not found in the rendered conversation")
        start = (
            len(prev) if prev is not None and full.startswith(prev) and cursor <= len(prev) <= pos else pos
        )
        end = pos + len(text)
        rest = full[end:]
        tail = len(rest) - len(rest.lstrip())
        for special in sorted(self.tok.all_special_tokens, key=len, reverse=True):
            if special and rest[tail:].startswith(special):
                end += tail + len(special)
                break
        return start, end

    def decode(self, ids: list[int], **kw: Any) -> str:
        return self.tok.decode(ids, skip_special_tokens=True, **kw)


def _overlaps(offset: tuple[int, int], a: int, b: int) -> bool:
    s, e = offset
    return (s < b and e > a) if e > s else a <= s < b
