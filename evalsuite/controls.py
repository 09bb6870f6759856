"""Built-in calibration controls for the judge and the relevance model (see study.calibrate).

Each control is an (instruction, response) pair whose correct verdict is known ("hidden labels"):

  good          a correct answer to its own instruction: human Dolly / LIMA responses to their English
                instructions (data/train), and xlit's short written answers to evaluation items
                (WRITTEN_ANSWERS, in en/fr/pt/ru) in the instruction's language
  null_empty    an empty answer to an evaluation instruction
  null_refusal  a refusal ("I'm sorry, but I can't help with that request."), in the instruction's language
  null_echo     the instruction repeated back as the answer
  wrong_lang    a correct written answer in another language than the instruction's (the English answer to
                the French instruction, the French/Portuguese/Russian answer to the English one)
  mismatched    a good answer to a different instruction (same language)

Labels per control: `language_ok` (is the answer in the instruction's language; None for an empty answer),
`helpful` (True for good, False for null and mismatched, None for wrong_lang), `relevant` (1 for good, 0
for null and mismatched, None for wrong_lang). Building is deterministic: the same `per_kind` and `seed`
give the same controls, so replies come from the cache on a rerun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path
from typing import Any

from evalsuite.data import LANGS, load_eval

KINDS = ("good", "null_empty", "null_refusal", "null_echo", "wrong_lang", "mismatched")
NULL_KINDS = ("null_empty", "null_refusal", "null_echo")
GROUPS = ("good", "null", "wrong_lang", "mismatched")  # --per_kind counts controls per group

REFUSALS = {
    "en": "I'm sorry, but I can't help with that request.",
    "fr": "Je suis désolé, mais je ne peux pas vous aider avec cette demande.",
    "pt": "Sinto muito, mas não posso ajudar com esse pedido.",
    "ru": "Извините, но я не могу помочь с этим запросом.",
}

# Short correct answers written for xlit to evaluation items (line index in data/eval), in each language.
WRITTEN_ANSWERS: dict[int, dict[str, str]] = {
    9: {
        "en": "Cacti need a loose, fast-draining soil that does not hold water. Use a commercial cactus and "
        "succulent mix, or mix regular potting soil with coarse sand, perlite or fine gravel, and always use a "
        "pot with a drainage hole.",
        "fr": "Les cactus ont besoin d'un sol léger et bien drainant qui ne retient pas l'eau. Utilisez un terreau "
        "spécial cactées et plantes grasses, ou mélangez du terreau ordinaire avec du sable grossier, de la "
        "perlite ou du gravier fin, et choisissez un pot percé.",
        "pt": "Os cactos precisam de um solo leve e bem drenado, que não retenha água. Use um substrato próprio "
        "para cactos e suculentas, ou misture terra vegetal comum com areia grossa, perlita ou cascalho fino, e "
        "escolha um vaso com furo de drenagem.",
        "ru": "Кактусам нужна рыхлая, хорошо дренированная почва, которая не удерживает воду. Используйте "
        "готовый грунт для кактусов и суккулентов или смешайте обычный грунт с крупным песком, перлитом или "
        "мелким гравием и берите горшок с дренажным отверстием.",
    },
    14: {
        "en": "Larry Page is an American computer scientist and entrepreneur who co-founded Google with Sergey "
        "Brin in 1998. He was Google's CEO and later the CEO of its parent company Alphabet until 2019.",
        "fr": "Larry Page est un informaticien et entrepreneur américain qui a cofondé Google avec Sergey Brin en "
        "1998. Il a été PDG de Google, puis de sa maison mère Alphabet jusqu'en 2019.",
        "pt": "Larry Page é um cientista da computação e empresário norte-americano que fundou o Google com "
        "Sergey Brin em 1998. Ele foi CEO do Google e depois da empresa controladora Alphabet até 2019.",
        "ru": "Ларри Пейдж — американский программист и предприниматель, который в 1998 году вместе с Сергеем "
        "Брином основал Google. Он был генеральным директором Google, а затем материнской компании Alphabet "
        "до 2019 года.",
    },
    15: {
        "en": "People in Argentina speak Spanish, which is the official and by far the most widely used language "
        "of the country. Argentinians speak it with a distinctive accent and their own vocabulary.",
        "fr": "En Argentine, on parle espagnol : c'est la langue officielle et de loin la plus utilisée du pays. "
        "Les Argentins le parlent avec un accent particulier et un vocabulaire qui leur est propre.",
        "pt": "Na Argentina fala-se espanhol, que é a língua oficial e de longe a mais usada no país. Os "
        "argentinos falam com um sotaque característico e um vocabulário próprio.",
        "ru": "В Аргентине говорят на испанском языке: это официальный и самый распространённый язык страны. "
        "Аргентинцы говорят на нём с характерным акцентом и используют свою особую лексику.",
    },
    16: {
        "en": "The capital of Australia is Canberra. It was purpose-built as a compromise between Sydney and "
        "Melbourne and has been the seat of the federal government since 1927.",
        "fr": "La capitale de l'Australie est Canberra. La ville a été construite spécialement comme compromis "
        "entre Sydney et Melbourne, et elle accueille le gouvernement fédéral depuis 1927.",
        "pt": "A capital da Austrália é Camberra. A cidade foi construída de propósito como um compromisso entre "
        "Sydney e Melbourne e é a sede do governo federal desde 1927.",
        "ru": "Столица Австралии — Канберра. Город был специально построен как компромисс между Сиднеем и "
        "Мельбурном и с 1927 года является местом работы федерального правительства.",
    },
    41: {
        "en": "The eight planets of our solar system, in order from the Sun, are: Mercury, Venus, Earth, Mars, "
        "Jupiter, Saturn, Uranus and Neptune. Pluto was reclassified as a dwarf planet in 2006.",
        "fr": "Les huit planètes du système solaire, dans l'ordre à partir du Soleil, sont : Mercure, Vénus, la "
        "Terre, Mars, Jupiter, Saturne, Uranus et Neptune. Pluton est classée comme planète naine depuis 2006.",
        "pt": "Os oito planetas do sistema solar, em ordem a partir do Sol, são: Mercúrio, Vênus, Terra, Marte, "
        "Júpiter, Saturno, Urano e Netuno. Plutão passou a ser classificado como planeta anão em 2006.",
        "ru": "Восемь планет Солнечной системы в порядке удаления от Солнца: Меркурий, Венера, Земля, Марс, "
        "Юпитер, Сатурн, Уран и Нептун. С 2006 года Плутон считается карликовой планетой.",
    },
    57: {
        "en": "The volume of a sphere with radius R is V = (4/3)·π·R³. For example, a sphere with a radius of "
        "3 cm has a volume of 36π, which is about 113.1 cubic centimetres.",
        "fr": "Le volume d'une sphère de rayon R est V = (4/3)·π·R³. Par exemple, une sphère de rayon 3 cm a un "
        "volume de 36π, soit environ 113,1 centimètres cubes.",
        "pt": "O volume de uma esfera de raio R é V = (4/3)·π·R³. Por exemplo, uma esfera com raio de 3 cm tem "
        "um volume de 36π, ou seja, cerca de 113,1 centímetros cúbicos.",
        "ru": "Объём шара радиуса R равен V = (4/3)·π·R³. Например, шар радиусом 3 см имеет объём 36π, то есть "
        "примерно 113,1 кубического сантиметра.",
    },
    74: {
        "en": "The total travel time is 23 and a half hours: 8 hours for the first flight, an hour and a half "
        "for the stopover and 14 hours for the second flight (8 + 1.5 + 14 = 23.5).",
        "fr": "Le temps de trajet total est de 23 heures et demie : 8 heures pour le premier vol, une heure et "
        "demie d'escale et 14 heures pour le second vol (8 + 1,5 + 14 = 23,5).",
        "pt": "O tempo total de viagem é de 23 horas e meia: 8 horas no primeiro voo, uma hora e meia de escala "
        "e 14 horas no segundo voo (8 + 1,5 + 14 = 23,5).",
        "ru": "Общее время в пути — 23 с половиной часа: 8 часов на первый перелёт, полтора часа на пересадку "
        "и 14 часов на второй перелёт (8 + 1,5 + 14 = 23,5).",
    },
    75: {
        "en": "You have 5 eggs left. You started with 12, the 2 you dropped are broken and the 5 you ate are "
        "gone, so 12 − 2 − 5 = 5.",
        "fr": "Il vous reste 5 œufs. Vous en aviez 12, les 2 que vous avez fait tomber sont cassés et les 5 que "
        "vous avez mangés ne sont plus là, donc 12 − 2 − 5 = 5.",
        "pt": "Você fica com 5 ovos. Você tinha 12, os 2 que deixou cair se quebraram e os 5 que comeu já não "
        "existem, então 12 − 2 − 5 = 5.",
        "ru": "У вас осталось 5 яиц. Сначала их было 12, два разбились, когда вы их уронили, а пять вы съели, "
        "поэтому 12 − 2 − 5 = 5.",
    },
}
MAX_INSTRUCTION_CHARS = 250
MAX_RESPONSE_CHARS = 500


@dataclasses.dataclass(frozen=True)
class Control:
    """One calibration control: an instruction, a response and its hidden labels."""

    id: str
    kind: str  # one of KINDS
    lang: str  # language of the instruction
    response_lang: str | None  # language the response is written in (None: empty)
    instruction: str
    response: str
    source: str  # where instruction/response come from (dolly:N, lima:N, eval:N, written:N)
    language_ok: bool | None
    helpful: bool | None
    relevant: int | None

    def to_row(self) -> dict[str, Any]:
        """A row as evalsuite.scoring expects it (messages, response, lang) plus the control fields."""
        return {
            **dataclasses.asdict(self),
            "messages": [{"role": "user", "content": self.instruction}],
        }


def _data_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "data" / "train"


def human_pairs(root: str | Path | None = None) -> list[tuple[str, str, str]]:
    """(source, instruction, response) from the shipped Dolly subset (no context) and LIMA (single turn),
    short enough for a judge prompt; in file order."""
    d = Path(root) if root else _data_dir()
    out = []
    with open(d / "dolly_subset.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            ins, resp = r["instruction"].strip(), r["response"].strip()
            if (
                not r.get("context")
                and 20 <= len(ins) <= MAX_INSTRUCTION_CHARS
                and 40 <= len(resp) <= MAX_RESPONSE_CHARS
            ):
                out.append((f"dolly:{i}", ins, resp))
    with open(d / "lima.en.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            conv = json.loads(line).get("conversations") or []
            if len(conv) != 2:
                continue
            ins, resp = conv[0].strip(), conv[1].strip()
            if 20 <= len(ins) <= MAX_INSTRUCTION_CHARS and 40 <= len(resp) <= MAX_RESPONSE_CHARS:
                out.append((f"lima:{i}", ins, resp))
    return out


def _eval_instruction(item: int, lang: str) -> str:
    return load_eval(lang)[item].instruction


def build_controls(per_kind: int = 8, seed: int = 0, langs: tuple[str, ...] = LANGS) -> list[Control]:
    """`per_kind` controls in each group of GROUPS (good, null, wrong_lang, mismatched), cycling over `langs`
    from a different language in each group (so that even per_kind=2 covers en, fr, pt and ru).

    good: half human Dolly/LIMA pairs (English), half written answers in the instruction's language;
    null: empty / refusal / echo in turn; wrong_lang: a written answer in another language (English for a
    non-English instruction, the next language for an English one); mismatched: a good answer to another
    instruction in the same language (human pairs for English, written answers otherwise).
    """
    if per_kind < 1:
        raise ValueError("per_kind must be >= 1")
    rng = random.Random(seed)
    human = human_pairs()
    rng.shuffle(human)
    written = sorted(WRITTEN_ANSWERS)
    rng.shuffle(written)
    evals = [
        i
        for i in range(len(load_eval("en")))
        if all(len(_eval_instruction(i, lang)) <= MAX_INSTRUCTION_CHARS for lang in langs)
    ]
    rng.shuffle(evals)
    out: list[Control] = []

    def add(kind: str, lang: str, rlang: str | None, ins: str, resp: str, src: str) -> None:
        language_ok = None if rlang is None else rlang == lang
        helpful = None if kind == "wrong_lang" else kind == "good"
        relevant = None if kind == "wrong_lang" else int(kind == "good")
        cid = f"{kind}-{lang}-{len(out):03d}"
        out.append(Control(cid, kind, lang, rlang, ins, resp, src, language_ok, helpful, relevant))

    n_human = (per_kind + 1) // 2
    for j in range(n_human):
        src, ins, resp = human[j % len(human)]
        add("good", "en", "en", ins, resp, src)
    for j in range(per_kind - n_human):
        item, lang = written[j % len(written)], langs[(j + 1) % len(langs)]
        add("good", lang, lang, _eval_instruction(item, lang), WRITTEN_ANSWERS[item][lang], f"written:{item}")
    for j in range(per_kind):
        kind, lang = NULL_KINDS[j % len(NULL_KINDS)], langs[(j + 2) % len(langs)]
        item = evals[j % len(evals)]
        ins = _eval_instruction(item, lang)
        resp = {"null_empty": "", "null_refusal": REFUSALS[lang], "null_echo": ins}[kind]
        add(kind, lang, None if kind == "null_empty" else lang, ins, resp, f"eval:{item}")
    for j in range(per_kind):
        item, lang = written[(j + 1) % len(written)], langs[(j + 3) % len(langs)]
        rlang = "en" if lang != "en" else [x for x in langs if x != "en"][j % max(1, len(langs) - 1)]
        add(
            "wrong_lang",
            lang,
            rlang,
            _eval_instruction(item, lang),
            WRITTEN_ANSWERS[item][rlang],
            f"written:{item}",
        )
    for j in range(per_kind):
        lang = langs[j % len(langs)]
        if lang == "en":
            _, ins, _ = human[(n_human + 2 * j) % len(human)]
            src, _, resp = human[(n_human + 2 * j + 1) % len(human)]
            add("mismatched", "en", "en", ins, resp, src)
        else:
            a, b = written[j % len(written)], written[(j + 3) % len(written)]
            add(
                "mismatched", lang, lang, _eval_instruction(a, lang), WRITTEN_ANSWERS[b][lang], f"written:{b}"
            )
    return out


def controls_hash(controls: list[Control]) -> str:
    """A short hash of the controls' instructions and responses (part of a card's identity)."""
    blob = json.dumps([(c.id, c.instruction, c.response) for c in controls], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
