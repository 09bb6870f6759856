"""Modifier fulfilment checks (Table 1): positive and negative examples in en, fr, pt, ru."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer

from chat.client import ChatRunner, ModelSpec
from evalsuite.data import load_modifiers
from evalsuite.langid import get_langid
from evalsuite.modifiers import (
    Thresholds,
    check_programmatic,
    count_items,
    count_words,
    derive_thresholds,
    helpfulness_with_modifier,
    modifier_request,
    thresholds,
)

REPO = Path(__file__).resolve().parents[1]

LANGS = ("en", "fr", "pt", "ru")
SENT = {
    "en": "Cook the steak in a very hot pan for three minutes on each side.",
    "fr": "Faites cuire le steak dans une poêle très chaude pendant trois minutes de chaque côté.",
    "pt": "Cozinhe o bife numa frigideira muito quente durante três minutos de cada lado.",
    "ru": "Обжарьте стейк на очень горячей сковороде по три минуты с каждой стороны.",
}
ITEMS = {
    "en": ["Jazz", "Blues", "Swing", "Ragtime", "Tango", "Foxtrot"],
    "fr": ["Le jazz", "Le blues", "Le swing", "Le ragtime", "Le tango", "Le fox-trot"],
    "pt": ["O jazz", "O blues", "O swing", "O ragtime", "O tango", "O foxtrote"],
    "ru": ["Джаз", "Блюз", "Свинг", "Регтайм", "Танго", "Фокстрот"],
}
CAPITALISED = {
    "en": "Cook The Steak In A Very Hot Pan For Three Minutes On Each Side.",
    "fr": "Faites Cuire Le Steak Dans Une Poêle Très Chaude, Puis L'Œuf Et D'Abord Le Sel.",
    "pt": "Cozinhe O Bife Numa Frigideira Muito Quente Durante Três Minutos De Cada Lado.",
    "ru": "Обжарьте Стейк На Очень Горячей Сковороде По Три Минуты С Каждой Стороны.",
}
OTHER = {"en": "fr", "fr": "pt", "pt": "ru", "ru": "de"}
DE = "Braten Sie das Steak in einer sehr heißen Pfanne drei Minuten auf jeder Seite."


def check(mtype, response, lang, arg=None):
    return check_programmatic(mtype, arg, response, lang, get_langid())


@pytest.mark.parametrize("lang", LANGS)
def test_short(lang):
    assert check("short", f"{SENT[lang]} {SENT[lang]}", lang) == (True, f"2 sentences (max 5 in {lang})")
    assert check("short", " ".join([SENT[lang]] * 7), lang) == (False, f"7 sentences (max 5 in {lang})")
    assert check("short", "", lang)[0] is False


@pytest.mark.parametrize("lang", LANGS)
def test_long(lang):
    n = len(SENT[lang].split())
    limit = thresholds(lang).long_min_words
    reps = limit // n + 1
    ok, detail = check("long", "\n".join([SENT[lang]] * reps), lang)
    assert ok and detail == f"{reps * n} words (min {limit} in {lang})"
    assert check("long", SENT[lang], lang) == (False, f"{n} words (min {limit} in {lang})")


EXPECTED_THRESHOLDS = {  # docs/evalsuite.md "Modifier thresholds per language"
    "en": Thresholds(5, 150),
    "fr": Thresholds(5, 157),
    "pt": Thresholds(5, 151),
    "ru": Thresholds(5, 128),
}


def test_thresholds_documented_and_derived_from_the_parallel_data():
    assert {lang: thresholds(lang) for lang in LANGS} == EXPECTED_THRESHOLDS
    assert derive_thresholds() == EXPECTED_THRESHOLDS  # the method stated in the docs gives the table
    doc = (REPO / "docs" / "evalsuite.md").read_text(encoding="utf-8")
    section = doc.split("Modifier thresholds per language", 1)[1]
    table = {
        m.group(1): Thresholds(int(m.group(2)), int(m.group(3)))
        for m in re.finditer(r"^\|\s*`?(en|fr|pt|ru)`?\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|", section, re.M)
    }
    assert table == EXPECTED_THRESHOLDS


def test_count_words_any_script():
    assert count_words("Привет, мир! Это по-русски.") == 4  # Cyrillic; по-русски is one word
    assert count_words("L'été à São Paulo, où l'on prend un guarda-chuva.") == 9
    assert count_words("cafe\u0301 noir") == 2  # decomposed accent stays in the word
    assert count_words("Ёлка, ещё 2024 раза!") == 4
    assert count_words("— … !? 123") == 1


# Hand-made answers per language: sentences about a game, as a model would write them.
GAME = {
    "en": [
        "Each team tries to score more points than the other team.",
        "A player kicks the ball and then runs around the bases.",
        "The defenders catch the ball and throw it back quickly.",
        "After three outs the teams swap their roles on the field.",
    ],
    "fr": [
        "Chaque équipe essaie de marquer plus de points que l'autre équipe.",
        "Un joueur frappe le ballon puis court autour des bases.",
        "Les défenseurs attrapent le ballon et le renvoient très vite.",
        "Après trois retraits, les équipes échangent leurs rôles sur le terrain.",
    ],
    "pt": [
        "Cada equipe tenta marcar mais pontos do que a outra equipe.",
        "Um jogador chuta a bola e depois corre em volta das bases.",
        "Os defensores pegam a bola e a devolvem muito rápido.",
        "Depois de três eliminações, as equipes trocam de papel no campo.",
    ],
    "ru": [
        "Каждая команда старается набрать больше очков, чем соперник.",
        "Игрок бьёт по мячу и затем бежит вокруг баз.",
        "Защитники ловят мяч и быстро возвращают его обратно.",
        "После трёх аутов команды меняются ролями на поле.",
    ],
}


def answer(lang: str, n_sentences: int) -> str:
    return " ".join(GAME[lang][i % 4] for i in range(n_sentences))


def words_answer(lang: str, min_words: int) -> str:
    """Paragraphs of the language's sentences until at least `min_words` words."""
    out: list[str] = []
    while count_words(" ".join(out)) < min_words:
        out.append(GAME[lang][len(out) % 4])
    return "\n\n".join(" ".join(out[i : i + 4]) for i in range(0, len(out), 4))


@pytest.mark.parametrize("lang", LANGS)
def test_shipped_short_and_long_prompts(lang):
    """Every shipped short/long modifier prompt of the language: an obviously fulfilling and an obviously
    failing hand-made answer in that language are judged as such, with the language's thresholds."""
    records = [r for r in load_modifiers(lang) if r.modifier_type in ("short", "long")]
    assert {r.modifier_type for r in records} == {"short", "long"} and len(records) == 40
    limit = thresholds(lang)
    for r in records:
        if r.modifier_type == "short":
            good, bad = answer(lang, 3), answer(lang, 3 * limit.short_max_sentences)
        else:
            good = words_answer(lang, int(1.5 * limit.long_min_words))
            bad = answer(lang, 4)  # one paragraph, ~40 words
        assert check_programmatic(r.modifier_type, r.modifier_arg, good, lang, None)[0] is True, (r.id, good)
        assert check_programmatic(r.modifier_type, r.modifier_arg, bad, lang, None)[0] is False, (r.id, bad)


def test_long_threshold_is_per_language():
    """A Russian answer as long as a 150-word English one has ~128 words: it fulfils "long" in Russian."""
    ru = words_answer("ru", 130)
    n = count_words(ru)
    assert 128 <= n < 150
    assert check("long", ru, "ru")[0] is True
    assert check("long", ru, "en")[0] is False  # the English threshold would have failed it
    with pytest.raises(ValueError, match="no short/long modifier thresholds for language 'de'"):
        check("long", ru, "de")


@pytest.mark.parametrize("lang", LANGS)
def test_num_items(lang):
    numbered = "Intro:\n" + "\n".join(f"{i + 1}. {x}" for i, x in enumerate(ITEMS[lang][:5]))
    assert check("num_items", numbered, lang, "5") == (True, "5 items (expected 5)")
    assert check("num_items", numbered, lang, "4") == (False, "5 items (expected 4)")
    bullets = "\n".join(f"- {x}\n  - detail" for x in ITEMS[lang][:3]) + "\n\nConclusion."
    assert count_items(bullets) == 3
    numbered_with_bullets = "1. A\n   - a\n   - b\n2. B\n- note"
    assert count_items(numbered_with_bullets) == 2
    inline = f"{SENT[lang][:10]}: {', '.join(ITEMS[lang][:4])}."
    assert check("num_items", inline, lang, "4")[0] is True
    assert check("num_items", SENT[lang] + "\n" + SENT[lang] + "\n" + SENT[lang], lang, "4")[0] is False


@pytest.mark.parametrize("lang", LANGS)
def test_lang(lang):
    target = OTHER[lang]
    text = {**SENT, "de": DE}[target]
    assert check("lang", text, lang, target)[0] is True
    assert check("lang", SENT[lang], lang, target)[0] is False


@pytest.mark.parametrize("lang", LANGS)
def test_markdown(lang):
    ok, detail = check(
        "markdown_template", f"## {ITEMS[lang][0]}\n\n- **{ITEMS[lang][1]}**: {SENT[lang]}", lang
    )
    assert ok and detail == "markdown: heading, bold, bullet"
    plain = f"{SENT[lang]}\n1. {ITEMS[lang][0]}\n2. {ITEMS[lang][1]}"
    assert check("markdown_template", plain, lang) == (False, "markdown: none")
    assert check("markdown_template", f"| a | b |\n|---|---|\n| {ITEMS[lang][0]} | 1 |", lang) == (
        True,
        "markdown: table",
    )


@pytest.mark.parametrize("lang", LANGS)
def test_html(lang):
    page = f"```html\n<!DOCTYPE html>\n<html><head><title>{ITEMS[lang][0]}</title></head>\n<body><h1>{ITEMS[lang][0]}</h1><ul><li>{SENT[lang]}<li>x</ul><br><img src='a.png'></body></html>\n```"
    assert check("html_template", page, lang) == (True, "html page")
    assert check("html_template", f"<h1>{ITEMS[lang][0]}</h1><p>{SENT[lang]}</p>", lang) == (
        False,
        "no <html>; no <body>",
    )
    ok, detail = check("html_template", f"<html><body><div>{SENT[lang]}</body></html>", lang)
    assert not ok and detail == "<div> not closed before </body>"
    assert check("html_template", SENT[lang], lang)[0] is False


@pytest.mark.parametrize("lang", LANGS)
def test_arrow(lang):
    arrows = f"{SENT[lang]}\n-> {ITEMS[lang][0]}\n--> {ITEMS[lang][1]}\n→ {ITEMS[lang][2]}"
    assert check("arrow_template", arrows, lang) == (True, "3 arrow points, 0 other list points")
    dashes = "\n".join(f"- {x}" for x in ITEMS[lang][:3])
    assert check("arrow_template", dashes, lang) == (False, "0 arrow points, 3 other list points")
    mixed = f"-> {ITEMS[lang][0]}\n-> {ITEMS[lang][1]}\n1. {ITEMS[lang][2]}"
    assert check("arrow_template", mixed, lang) == (False, "2 arrow points, 1 other list points")


@pytest.mark.parametrize("lang", LANGS)
def test_cap(lang):
    ok, detail = check("cap_template", CAPITALISED[lang], lang)
    assert ok, detail
    assert check("cap_template", SENT[lang], lang)[0] is False


def test_cap_exact_ratio_and_french_elision():
    assert check("cap_template", "Faites Cuire L'Œuf, d'Abord", "fr") == (
        True,
        "4/4 words capitalised (min 90%)",
    )
    assert check("cap_template", "Faites Cuire L'œuf", "fr") == (False, "2/3 words capitalised (min 90%)")
    assert check("cap_template", "One Two Three Four Five Six Seven Eight Nine ten", "en") == (
        True,
        "9/10 words capitalised (min 90%)",
    )
    assert check("cap_template", "One Two Three Four Five Six Seven Eight nine ten", "en") == (
        False,
        "8/10 words capitalised (min 90%)",
    )


def test_unknown_or_incomplete_modifier():
    with pytest.raises(ValueError, match="no programmatic check"):
        check("scientific_style", "x", "en")
    with pytest.raises(ValueError, match="needs modifier_arg"):
        check("num_items", "x", "en", None)


@pytest.mark.parametrize(
    "helpfulness, ok, expected",
    [(2, True, 2), (2, False, 1), (1, False, 1), (0, False, 0), (None, True, None), (2, None, None)],
)
def test_helpfulness_with_modifier(helpfulness, ok, expected):
    assert helpfulness_with_modifier(helpfulness, ok) == expected


@pytest.mark.parametrize("mtype", ["scientific_style", "simple_style", "complex_inst"])
def test_llm_judged_modifiers_against_local_server(mtype, tmp_path):
    with FakeOpenAIServer(seed=5, fault_rate=0.0) as srv:
        runner = ChatRunner(ModelSpec("judge", srv.base_url), timeout_s=5)
        reqs = []
        for lang in LANGS:
            reqs.append(
                modifier_request(mtype, "Explain X. Then Y.", f"{SENT[lang]} XLIT_RELEVANT", "Then Y.")
            )
            reqs.append(
                modifier_request(mtype, "Explain X. Then Y.", f"{SENT[lang]} XLIT_IRRELEVANT", "Then Y.")
            )
        outs = runner.run(reqs)
        assert [o.value for o in outs] == [1, 0] * 4
        body = srv.requests_log[0]["body"]
        assert body["temperature"] == 0 and "Then Y." in body["messages"][0]["content"]
