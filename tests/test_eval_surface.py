"""Surface metrics: fastText language id, code-switching, Hunspell spelling and the tokenizer."""

from __future__ import annotations

import pytest

from evalsuite.langid import get_langid
from evalsuite.spelling import find_dictionary, get_checker, words
from evalsuite.surface import SurfaceScorer, expected_language

SENTENCES = {
    "en": "The weather is lovely today, so we are going for a long walk in the park.",
    "fr": "Il fait très beau aujourd'hui, alors nous allons faire une longue promenade dans le parc.",
    "pt": "O tempo está ótimo hoje, por isso vamos dar um longo passeio no parque.",
    "ru": "Сегодня прекрасная погода, поэтому мы идём на долгую прогулку в парк.",
    "de": "Das Wetter ist heute herrlich, deshalb machen wir einen langen Spaziergang im Park.",
}


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_fasttext_identifies_known_sentences(lang):
    pred, prob = get_langid().predict(SENTENCES[lang])
    assert pred == lang and prob > 0.9
    # newlines are removed before classification: same answer on a multi-line version
    assert get_langid().predict(SENTENCES[lang].replace(" ", "\n", 3))[0] == lang


def test_fasttext_empty_response():
    assert get_langid().predict(" \n ") == (None, 0.0)


def test_code_switch_rate_counts_long_sentences_in_other_languages():
    text = f"{SENTENCES['fr']} {SENTENCES['en']}\n{SENTENCES['fr']} Ok. {SENTENCES['de']}"
    lid = get_langid()
    assert len(lid.sentences(text)) == 4  # "Ok." is below the 20-letter threshold
    assert lid.code_switch_rate(text, "fr") == 0.5
    assert lid.code_switch_rate(SENTENCES["ru"], "ru") == 0.0
    assert lid.code_switch_rate("Oui. Non.", "fr") is None


def test_tokenizer_ignores_numbers_urls_emails_code_markup_and_acronyms():
    text = (
        "## Title\n**Bold** text with `inline_code()` and a [link text](https://x.org/a).\n"
        "```python\nprint('hello wrld')\n```\n"
        "Visit www.example.com or mail bob@example.com. The USA and NASA use 3 items, 2nd place, COVID-19.\n"
        "<b>l’homme</b> &amp; peut-être don't"
    )
    assert words(text) == [
        "Title", "Bold", "text", "with", "and", "a", "link", "text",
        "Visit", "or", "mail", "The", "and", "use", "items", "place",
        "l'homme", "peut-être", "don't",
    ]  # fmt: skip


SPELLING_CASES = [
    # (lang, text, passing words, checked words)
    ("en", "I recieve teh letter yesterday and it was definately wonderful.", 7, 10),
    ("fr", "Je suis allé au marchée hier et j'ai achetté des pommes délicieuses.", 10, 12),
    ("pt", "Eu gosto muito de caminhar na praia e comer peixe grelhdo com os meus amigoss.", 13, 15),
    ("ru", "Вчера я ходил в магазен и купил хлеб, малоко и сыр.", 9, 11),
    ("de", "Ich habe gestern einen Apfell gekauft und ihn sofort gegessen.", 9, 10),
    ("en", "The API returned 404 at https://x.io, so NASA emailed me@x.org twice.", 6, 6),
]


@pytest.mark.parametrize("lang, text, ok, n", SPELLING_CASES)
def test_spelling_counts_known_misspellings(lang, text, ok, n):
    checker = get_checker(lang)
    assert checker is not None
    assert checker.counts(text) == (ok, n)
    assert checker.ok_rate(text) == pytest.approx(ok / n)


def test_spelling_without_words_or_dictionary():
    assert get_checker("en").ok_rate("123 4.5 https://x.org") is None
    assert get_checker("xx") is None
    assert find_dictionary("pt")[0].name in ("pt_PT.dic", "pt_BR.dic")


def test_portuguese_accepts_both_variants():
    # make setup installs hunspell-pt-pt and hunspell-pt-br; each spelling is known to one dictionary only
    checker = get_checker("pt")
    assert [p.name for p, _ in checker.dictionaries] == ["pt_PT.dic", "pt_BR.dic"]
    assert checker.counts("O crescimento económico e o crescimento econômico do ônibus.") == (9, 9)
    assert checker.counts("O crescimento economicco.") == (2, 3)


def test_expected_language_follows_lang_modifier():
    assert expected_language("fr") == "fr"
    assert expected_language("fr", "lang", "de") == "de"
    assert expected_language("fr", "short", None) == "fr"
    with pytest.raises(ValueError, match="needs modifier_arg"):
        expected_language("fr", "lang", None)


def test_surface_scorer_on_one_record():
    cols = SurfaceScorer().score(
        lang="fr",
        response="Ich habe gestern einen Apfell gekauft und ihn sofort gegessen.",
        modifier_type="lang",
        modifier_arg="de",
    )
    assert cols["expected_lang"] == "de" and cols["lang_pred"] == "de" and cols["lang_correct"] is True
    assert cols["spell_ok_rate"] == pytest.approx(0.9)
    assert cols["code_switch_rate"] == 0.0
    assert (cols["modifier_ok"], cols["modifier_status"]) == (True, "ok")
    wrong = SurfaceScorer().score(lang="ru", response=SENTENCES["en"])
    assert (wrong["lang_pred"], wrong["lang_correct"], wrong["modifier_status"]) == ("en", False, None)
