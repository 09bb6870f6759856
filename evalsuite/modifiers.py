"""Task-modifier fulfilment (paper Section 5.2, Table 1).

Programmatic checks, each returning (fulfilled, detail):
  short           at most thresholds(lang).short_max_sentences sentences (a sentence ends with . ! ? … or a
                  line break)
  long            at least thresholds(lang).long_min_words words (count_words: Unicode letters/digits, so
                  Cyrillic and accented Latin count; l'eau, guarda-chuva, don't are one word each)
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

Thresholds per language (`thresholds(lang, eval_dir)`; docs/evalsuite.md shows the shipped languages' table):
the English base (5 sentences, 150 words) scaled by how many sentences / words the same content takes in
the language, measured on the parallel evaluation set (derive_thresholds: threshold_L = round(base x
count_L / count_en), at least 1, over the 113 line-aligned instructions of
alpacaeval_test_subset.<lang>.jsonl). A language added by translation (docs/languages.md) gets its
thresholds the same way from its translated set, against the English set of its folder (else the shipped
one). Russian needs fewer words (no articles, synthetic morphology): 128 instead of 150.

Helpfulness with the modifier taken into account (`helpfulness_with_modifier`): the judge sees the full
instruction, and an answer that does not fulfil the modifier gets at most 1, as in the paper.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple

from chat.client import ChatRequest
from evalsuite.data import MODIFIER_TYPES, default_data_dir, eval_langs, load_eval
from evalsuite.langid import LangId
from evalsuite.prompts import modifier_prompt
from evalsuite.relevance import parse_binary_reply
from records.errors import InputError

SHORT_MAX_SENTENCES = 5  # English base of the thresholds (short: "Answer briefly in just a few sentences.")
LONG_MIN_WORDS = 150  # English base of the thresholds (long: "Give a detailed answer.")
CAP_MIN_RATIO = 0.9


class Thresholds(NamedTuple):
    short_max_sentences: int
    long_min_words: int


REFERENCE_LANG = "en"  # the language of the base thresholds
LLM_TYPES = ("scientific_style", "simple_style", "complex_inst")
PROGRAM_TYPES = tuple(t for t in MODIFIER_TYPES if t not in LLM_TYPES)

_SENT_END = re.compile(r"(?<=[.!?…])\s+|\n+")
_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")  # letters only (cap_template)
_W = r"(?:[^\W_][\u0300-\u036f]*)+"  # Unicode letters/digits (\w without _), combining accents kept
_COUNTED_WORD = re.compile(rf"{_W}(?:['’\-]{_W})*")
_ARROW = r"(?:-->|->|→)"
_LIST_LINE = re.compile(rf"^(?P<indent>[ \t]*)(?P<marker>\d{{1,3}}[.)]|{_ARROW}|[-*+•▪‣◦])[ \t]+\S")
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*$", re.M)


def _sentences(text: str) -> list[str]:
    return [s for s in _SENT_END.split(text) if any(ch.isalpha() for ch in s)]


def count_sentences(text: str) -> int:
    """Sentences with at least one letter; a sentence ends with . ! ? … followed by a space, or a line break."""
    return len(_sentences(text))


def count_words(text: str) -> int:
    """Words in any script: maximal runs of Unicode letters/digits (NFC; combining accents stay inside the
    word), joined by an apostrophe or a hyphen (l'eau, guarda-chuva, по-русски count once)."""
    return len(_COUNTED_WORD.findall(unicodedata.normalize("NFC", text)))


def thresholds(lang: str, eval_dir: str | Path | None = None) -> Thresholds:
    """The short/long thresholds of `lang`, derived from the parallel evaluation set in `eval_dir` (default:
    the shipped data/eval; derive_thresholds). InputError naming the folder when `lang` has no evaluation
    set there."""
    return _thresholds(str(Path(eval_dir or default_data_dir()).resolve()), lang)


@lru_cache(maxsize=64)
def _thresholds(eval_dir: str, lang: str) -> Thresholds:
    try:
        return derive_thresholds(eval_dir, (lang,))[lang]
    except InputError as e:
        raise InputError(f"no short/long modifier thresholds for language {lang!r}: {e}") from None


def check_short(response: str, lang: str = "en", eval_dir: str | Path | None = None) -> tuple[bool, str]:
    limit = thresholds(lang, eval_dir).short_max_sentences
    n = count_sentences(response)
    return 0 < n <= limit, f"{n} sentences (max {limit} in {lang})"


def check_long(response: str, lang: str = "en", eval_dir: str | Path | None = None) -> tuple[bool, str]:
    limit = thresholds(lang, eval_dir).long_min_words
    n = count_words(response)
    return n >= limit, f"{n} words (min {limit} in {lang})"


def _instruction_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages if m.get("role") != "system")


def derive_thresholds(
    root: str | Path | None = None, langs: tuple[str, ...] | None = None
) -> dict[str, Thresholds]:
    """Thresholds recomputed from the parallel evaluation set in `root` (default: the shipped data/eval) for
    `langs` (default: every language there): per language L, max(1, round(base x total_L / total_en)) for
    sentences (base 5) and words (base 150), totals over the line-aligned instructions (all 113; for a partial
    set, its lines and the same lines in English). English is read from `root`, else from the shipped folder
    (a translated folder may hold only its new language)."""
    folder = Path(root or default_data_dir())
    langs = eval_langs(folder) if langs is None else langs
    ref_root = folder if REFERENCE_LANG in eval_langs(folder) else default_data_dir()
    reference = {r.item: _instruction_text(r.messages) for r in load_eval(REFERENCE_LANG, ref_root)}

    def totals(texts: list[str]) -> tuple[int, int]:
        return sum(count_sentences(t) for t in texts), sum(count_words(t) for t in texts)

    out = {}
    for lang in langs:
        recs = load_eval(lang, folder)
        n_s, n_w = totals([_instruction_text(r.messages) for r in recs])
        ref_s, ref_w = totals([reference[r.item] for r in recs if r.item in reference])
        if not ref_s or not ref_w:
            raise InputError(
                f"{folder}: no {REFERENCE_LANG} instruction parallel to {lang}'s to derive thresholds"
            )
        out[lang] = Thresholds(
            max(1, round(SHORT_MAX_SENTENCES * n_s / ref_s)), max(1, round(LONG_MIN_WORDS * n_w / ref_w))
        )
    return out


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
    modifier_type: str,
    modifier_arg: str | None,
    response: str,
    lang: str,
    langid: LangId,
    eval_dir: str | Path | None = None,
) -> tuple[bool, str]:
    """Fulfilment of a programmatically checkable modifier; ValueError for other types. `eval_dir`: the
    evaluation folder holding `lang`'s set (for the short/long thresholds; default: the shipped one)."""
    checks: dict[str, Callable[[], tuple[bool, str]]] = {
        "short": lambda: check_short(response, lang, eval_dir),
        "long": lambda: check_long(response, lang, eval_dir),
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
