"""Spellcheck correctness with Hunspell (paper Appendix B): the share of words of a response that pass.

Tokenizer (`words`), in order:
  1. remove fenced code blocks (``` or ~~~), inline `code`, HTML/XML tags and entities, URLs and e-mails;
  2. markdown links/images keep only their text: [text](url) -> text;
  3. markdown markup characters (# * _ > | ~ = and table rules) become spaces;
  4. split on whitespace; drop every chunk that contains a digit (numbers, 2nd, 10km, COVID-19, v1.2);
  5. in each remaining chunk a word is a run of letters, optionally joined by apostrophes (' or U+2019,
     normalised to ') or hyphens: l'homme, don't, peut-être, кто-то, dá-me;
  6. all-caps words of two or more letters (acronyms: USA, HTML, ЕГЭ) are skipped.
A word passes if one of the language's installed dictionaries accepts it, or if it is hyphenated and
every part passes.

Dictionaries (Debian layout, *.dic + *.aff), searched in `dict_dirs` (default /usr/share/hunspell,
/usr/share/myspell/dicts, /usr/share/myspell): the names in DICTIONARIES for a language listed there (en ->
en_US, en_GB; pt -> pt_PT, pt_BR; ...), else any `<lang>.dic` or `<lang>_<REGION>.dic` found. Every installed
variant is used (pt_PT and pt_BR spellings both pass: económico, econômico).

A language without an installed dictionary is an error (MissingDictionaryError) naming the Debian package to
install (DICTIONARIES, else hunspell-<lang>), unless the caller opts out (`required=False`, the scorers'
`--spelling=skip`): then spelling is not scored (spell_ok_rate null) and the scorer says so.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import hunspell

from records.errors import InputError


class Dictionaries(NamedTuple):
    names: tuple[str, ...]  # Hunspell dictionary names, in order of preference
    packages: tuple[str, ...]  # the Debian packages that install them


# Known names and packages; a language not listed here still works with any <lang>[_XX].dic installed.
DICTIONARIES = {
    "en": Dictionaries(("en_US", "en_GB"), ("hunspell-en-us", "hunspell-en-gb")),
    "fr": Dictionaries(("fr_FR", "fr"), ("hunspell-fr",)),
    "pt": Dictionaries(("pt_PT", "pt_BR"), ("hunspell-pt-pt", "hunspell-pt-br")),
    "ru": Dictionaries(("ru_RU",), ("hunspell-ru",)),
    "de": Dictionaries(("de_DE",), ("hunspell-de-de",)),
    "es": Dictionaries(("es_ES", "es"), ("hunspell-es",)),
    "it": Dictionaries(("it_IT",), ("hunspell-it",)),
    "nl": Dictionaries(("nl_NL", "nl"), ("hunspell-nl",)),
    "sw": Dictionaries(("sw_TZ", "sw_KE"), ("hunspell-sw",)),
}
DICT_NAMES = {lang: d.names for lang, d in DICTIONARIES.items()}
DEFAULT_DICT_DIRS = ("/usr/share/hunspell", "/usr/share/myspell/dicts", "/usr/share/myspell")

_FENCED = re.compile(r"```.*?(?:```|$)|~~~.*?(?:~~~|$)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][^<>]*>", re.S)
_ENTITY = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[A-Za-z]+);")
_MD_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)")
_URL = re.compile(r"(?:https?|ftp)://\S+|www\.\S+")
_EMAIL = re.compile(r"\S+@\S+\.\S+")
_MARKUP = re.compile(r"[#*_>|~=\[\]{}]|-{3,}")
_WORD = re.compile(r"[^\W\d_]+(?:['\-][^\W\d_]+)*")


def words(text: str) -> list[str]:
    """The words of `text` that are spellchecked (see module docstring for the rules)."""
    text = _FENCED.sub(" ", text)
    text = _INLINE_CODE.sub(" ", text)
    text = _TAG.sub(" ", text)
    text = _ENTITY.sub(" ", text)
    text = _MD_LINK.sub(r" \1 ", text)
    text = _URL.sub(" ", text)
    text = _EMAIL.sub(" ", text)
    text = _MARKUP.sub(" ", text)
    text = text.replace("\u2019", "'")
    out = []
    for chunk in text.split():
        if any(map(str.isdigit, chunk)):
            continue
        for w in _WORD.findall(chunk):
            if len(w) >= 2 and w.isupper():
                continue
            out.append(w)
    return out


class MissingDictionaryError(InputError, FileNotFoundError):
    """No Hunspell dictionary for a language; the message names the Debian package to install."""


def debian_packages(lang: str) -> tuple[str, ...]:
    """The Debian packages with `lang`'s Hunspell dictionaries (DICTIONARIES, else hunspell-<lang>)."""
    known = DICTIONARIES.get(lang)
    return known.packages if known else (f"hunspell-{lang}",)


def _candidate_names(lang: str, dict_dirs: tuple[str, ...]) -> list[str]:
    if lang in DICTIONARIES:
        return list(DICTIONARIES[lang].names)
    names = [lang]
    for d in dict_dirs:
        names += sorted(
            p.stem for p in Path(d).glob(f"{lang}_*.dic") if re.fullmatch(rf"{lang}_[A-Z]{{2}}", p.stem)
        )
    return list(dict.fromkeys(names))


def find_dictionaries(lang: str, dict_dirs: tuple[str, ...] = DEFAULT_DICT_DIRS) -> list[tuple[Path, Path]]:
    """(dic, aff) paths of every installed variant for `lang` (first directory wins per variant)."""
    found: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for name in _candidate_names(lang, tuple(dict_dirs)):
        for d in dict_dirs:
            dic, aff = Path(d) / f"{name}.dic", Path(d) / f"{name}.aff"
            if dic.exists() and aff.exists():
                if dic.resolve() not in seen:  # Debian's fr.dic is a link to fr_FR.dic
                    seen.add(dic.resolve())
                    found.append((dic, aff))
                break
    return found


def find_dictionary(lang: str, dict_dirs: tuple[str, ...] = DEFAULT_DICT_DIRS) -> tuple[Path, Path] | None:
    """(dic, aff) paths of the first installed dictionary for `lang`, or None."""
    found = find_dictionaries(lang, dict_dirs)
    return found[0] if found else None


class SpellChecker:
    """Hunspell for one language, with a word cache; thread-safe."""

    def __init__(self, lang: str, dict_dirs: tuple[str, ...] = DEFAULT_DICT_DIRS):
        found = find_dictionaries(lang, dict_dirs)
        if not found:
            raise MissingDictionaryError(missing_message(lang, dict_dirs))
        self.lang = lang
        self.dictionaries = found
        self.dic, self.aff = found[0]
        self._hs = [hunspell.HunSpell(str(dic), str(aff)) for dic, aff in found]
        self._lock = threading.Lock()
        self._cache: dict[str, bool] = {}

    def _spell(self, word: str) -> bool:
        with self._lock:
            return any(h.spell(word) for h in self._hs)

    def check(self, word: str) -> bool:
        """True if Hunspell accepts `word` (hyphenated words: or all of their parts)."""
        hit = self._cache.get(word)
        if hit is None:
            hit = self._spell(word)
            if not hit and "-" in word:
                hit = all(self._spell(p) for p in word.split("-") if p)
            self._cache[word] = hit
        return hit

    def counts(self, text: str) -> tuple[int, int]:
        """(words that pass, words checked)."""
        ws = words(text)
        return sum(self.check(w) for w in ws), len(ws)

    def ok_rate(self, text: str) -> float | None:
        """Share of words that pass; None when the text has no word to check."""
        ok, n = self.counts(text)
        return ok / n if n else None


def missing_message(lang: str, dict_dirs: tuple[str, ...] = DEFAULT_DICT_DIRS) -> str:
    """Why `lang` cannot be spellchecked and what to do about it."""
    pkgs = debian_packages(lang)
    names = ", ".join(f"{n}.dic" for n in _candidate_names(lang, tuple(dict_dirs))) or f"{lang}_XX.dic"
    known = (
        "" if lang in DICTIONARIES else f" (if there is no such package: apt-cache search hunspell-{lang})"
    )
    return (
        f"no Hunspell dictionary for language {lang!r} ({names} + .aff) in {', '.join(dict_dirs)}: install "
        f"the Debian package {' or '.join(pkgs)} (apt-get install {pkgs[0]}){known}, or score without "
        f"spelling with --spelling=skip (spell_ok_rate is then null for {lang!r}, and the scores say so)"
    )


@lru_cache(maxsize=16)
def _load(lang: str, dict_dirs: tuple[str, ...]) -> SpellChecker | None:
    try:
        return SpellChecker(lang, dict_dirs)
    except MissingDictionaryError:
        return None


def get_checker(
    lang: str, dict_dirs: tuple[str, ...] = DEFAULT_DICT_DIRS, required: bool = False
) -> SpellChecker | None:
    """A shared SpellChecker for `lang`; without an installed dictionary None, or with `required`
    MissingDictionaryError naming the Debian package to install."""
    checker = _load(lang, tuple(dict_dirs))
    if checker is None and required:
        raise MissingDictionaryError(missing_message(lang, tuple(dict_dirs)))
    return checker
