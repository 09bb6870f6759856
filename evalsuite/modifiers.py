"""Task-modifier fulfilment (paper Section 5.2, Table 1).

Programmatic checks, each returning (fulfilled, detail):
  short           at most SHORT_MAX_SENTENCES sentences (a sentence ends with . ! ? or a line break)
  long            at least LONG_MIN_WORDS words
  num_items N     exactly N list items: lines starting with a number ("1." "1)") or a bullet
                  (- * + • -> →) at the outermost indentation, numbered items preferred when both occur;
                  without any list line, a one- or two-line answer counts its comma/semicolon-separated
                  items after the last colon
  lang XX         fastText top label == XX
  markdown        at least one markdown element beyond plain numbered lists: heading, **bold**/__bold__,
                  *emphasis*, bullet list (- * +), table rule, code fence, [link](url), > quote
  html_template   the answer (``` fences removed) parses with html.parser, has <html> and <body>, and
                  every opened non-void element is closed (optional end tags such as </li>, </p> allowed)
  arrow_template  at least two lines start with -> (or --> or →) and no list line starts with another marker
  cap_template    at least CAP_MIN_RATIO of the words start with a capital letter; in French, Portuguese
                  and Italian the word after an elided article (l', d', qu', ...) is the one checked
LLM-judged (a 0/1 prompt, prompts.MODIFIER_PROMPT): scientific_style, simple_style, complex_inst.

Helpfulness with the modifier taken into account (`helpfulness_with_modifier`): the judge sees the full
instruction, and an answer that does not fulfil the modifier gets at most 1, as in the paper.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser

from evalsuite.data import MODIFIER_TYPES
from evalsuite.langid import LangId
from evalsuite.llm import ChatRequest
from evalsuite.prompts import modifier_prompt
from evalsuite.relevance import parse_binary_reply

SHORT_MAX_SENTENCES = 5
LONG_MIN_WORDS = 150
CAP_MIN_RATIO = 0.9
LLM_TYPES = ("scientific_style", "simple_style", "complex_inst")
PROGRAM_TYPES = tuple(t for t in MODIFIER_TYPES if t not in LLM_TYPES)

_SENT_END = re.compile(r"(?<=[.!?…])\s+|\n+")
_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")
_ARROW = r"(?:-->|->|→)"
_LIST_LINE = re.compile(rf"^(?P<indent>[ \t]*)(?P<marker>\d{{1,3}}[.)]|{_ARROW}|[-*+•▪‣◦])[ \t]+\S")
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*$", re.M)


def _sentences(text: str) -> list[str]:
    return [s for s in _SENT_END.split(text) if any(ch.isalpha() for ch in s)]


def check_short(response: str) -> tuple[bool, str]:
    n = len(_sentences(response))
    return 0 < n <= SHORT_MAX_SENTENCES, f"{n} sentences (max {SHORT_MAX_SENTENCES})"


def check_long(response: str) -> tuple[bool, str]:
    n = len(_WORD.findall(response))
    return n >= LONG_MIN_WORDS, f"{n} words (min {LONG_MIN_WORDS})"


def count_items(response: str) -> int:
    """Number of list items (see module docstring)."""
    items = []
    for line in response.splitlines():
        m = _LIST_LINE.match(line.expandtabs(4))
        if m:
            items.append((len(m.group("indent")), m.group("marker")[0].isdigit()))
    if items:
        numbered = [i for i in items if i[1]]
        pool = numbered or items
        outer = min(i[0] for i in pool)
        return sum(1 for i in pool if i[0] == outer)
    lines = [ln for ln in response.splitlines() if ln.strip()]
    if not lines or len(lines) > 2:
        return 0
    tail = " ".join(lines).rsplit(":", 1)[-1]
    return len([p for p in re.split(r"[,;]", tail) if p.strip(" .\n")])


def check_num_items(response: str, n: int) -> tuple[bool, str]:
    got = count_items(response)
    return got == n, f"{got} items (expected {n})"


def check_lang(response: str, target: str, langid: LangId) -> tuple[bool, str]:
    pred, prob = langid.predict(response)
    return pred == target, f"fastText: {pred} ({prob:.2f}), expected {target}"


_MD = {
    "heading": re.compile(r"^\s{0,3}#{1,6}\s+\S", re.M),
    "bold": re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__"),
    "emphasis": re.compile(r"(?<![*\w])\*[^*\s][^*\n]*\*(?!\*)"),
    "bullet": re.compile(r"^\s*[-*+][ \t]+\S", re.M),
    "table": re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$", re.M),
    "code": re.compile(r"^\s*```", re.M),
    "link": re.compile(r"\[[^\]\n]+\]\([^)\s]+\)"),
    "quote": re.compile(r"^\s{0,3}>\s+\S", re.M),
}


def check_markdown(response: str) -> tuple[bool, str]:
    found = [name for name, rx in _MD.items() if rx.search(response)]
    return bool(found), "markdown: " + (", ".join(found) if found else "none")


_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
    "param",
}
_OPTIONAL_END = {
    "li",
    "p",
    "td",
    "th",
    "tr",
    "option",
    "dt",
    "dd",
    "thead",
    "tbody",
    "tfoot",
    "head",
    "colgroup",
}


class _TagChecker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.seen: set[str] = set()
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.seen.add(tag)
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.seen.add(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if tag not in self.stack:
            self.errors.append(f"</{tag}> without <{tag}>")
            return
        while self.stack:
            top = self.stack.pop()
            if top == tag:
                break
            if top not in _OPTIONAL_END:
                self.errors.append(f"<{top}> not closed before </{tag}>")


def check_html(response: str) -> tuple[bool, str]:
    text = _FENCE.sub("", response)
    p = _TagChecker()
    try:
        p.feed(text)
        p.close()
    except Exception as e:  # html.parser is lenient; anything it raises means "does not parse"
        return False, f"does not parse: {e}"
    missing = [t for t in ("html", "body") if t not in p.seen]
    unclosed = [t for t in p.stack if t not in _OPTIONAL_END]
    problems = [f"no <{t}>" for t in missing] + p.errors + [f"<{t}> not closed" for t in unclosed]
    return not problems, "; ".join(problems) or "html page"


def check_arrow(response: str) -> tuple[bool, str]:
    markers = [m.group("marker") for ln in response.splitlines() if (m := _LIST_LINE.match(ln))]
    arrows = sum(1 for mk in markers if re.fullmatch(_ARROW, mk))
    others = len(markers) - arrows
    return arrows >= 2 and others == 0, f"{arrows} arrow points, {others} other list points"


_ELISION = re.compile(r"^(?:[lLdDjJnNsStTmMcC]|[qQ]u|[jJ]usqu|[lL]orsqu|[pP]uisqu)'(?=\w)")


def check_cap(response: str, lang: str) -> tuple[bool, str]:
    text = re.sub(r"```.*?```|`[^`]*`|https?://\S+", " ", response, flags=re.S)
    words = _WORD.findall(text.replace("’", "'"))
    if not words:
        return False, "no words"
    ok = 0
    for w in words:
        if lang in ("fr", "pt", "it"):
            w = _ELISION.sub("", w) or w
        ok += w[0].isupper()
    ratio = ok / len(words)
    return ratio >= CAP_MIN_RATIO, f"{ok}/{len(words)} words capitalised (min {CAP_MIN_RATIO:.0%})"


def check_programmatic(
    modifier_type: str, modifier_arg: str | None, response: str, lang: str, langid: LangId
) -> tuple[bool, str]:
    """Fulfilment of a programmatically checkable modifier; ValueError for other types."""
    checks: dict[str, Callable[[], tuple[bool, str]]] = {
        "short": lambda: check_short(response),
        "long": lambda: check_long(response),
        "num_items": lambda: check_num_items(response, int(modifier_arg or "0")),
        "lang": lambda: check_lang(response, modifier_arg or "", langid),
        "markdown_template": lambda: check_markdown(response),
        "html_template": lambda: check_html(response),
        "arrow_template": lambda: check_arrow(response),
        "cap_template": lambda: check_cap(response, lang),
    }
    if modifier_type not in checks:
        raise ValueError(f"modifier type {modifier_type!r} has no programmatic check")
    if modifier_type in ("num_items", "lang") and not modifier_arg:
        raise ValueError(f"modifier type {modifier_type!r} needs modifier_arg")
    return checks[modifier_type]()


def modifier_request(modifier_type: str, task: str, response: str, modifier_text: str) -> ChatRequest:
    """The 0/1 LLM request for scientific_style, simple_style or complex_inst."""
    prompt = modifier_prompt(modifier_type, task, response, modifier_text)
    return ChatRequest(
        [{"role": "user", "content": prompt}], {"temperature": 0, "max_tokens": 32}, parse_binary_reply, 4
    )


def helpfulness_with_modifier(helpfulness: int | None, modifier_ok: bool | None) -> int | None:
    """Judge helpfulness capped at 1 when the modifier is not fulfilled; None if either is unknown."""
    if helpfulness is None or modifier_ok is None:
        return None
    return helpfulness if modifier_ok else min(helpfulness, 1)
