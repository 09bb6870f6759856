"""Row models: what one record of each kind must hold, checked where it enters a stage.

The Arrow schemas of `records.schemas` stay the single source of column names and types; these pydantic
models mirror them (tests/test_records.py checks names, types and required columns against the schemas) and
add what a column type cannot say: the allowed roles, 0/1/2 scores, a user message to answer.

`check(Model, value, where)` validates one row and raises an InputError (RecordError unless told) naming the
place, the field and what was wrong, e.g.

    prompts.jsonl:3: field 'messages[1].role' is 'bot', expected system, user or assistant
    gens.parquet: row 4: field 'response' must be a string (null)
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from records.errors import InputError
from records.files import RecordError
from records.schemas import JUDGE_CRITERIA

M = TypeVar("M", bound=BaseModel)

Role = Literal["system", "user", "assistant"]
Status = Literal["ok", "failed", "skipped"]
Score = Annotated[int, Field(ge=0, le=2, description="0, 1 or 2")]  # a judge or human rating
Count = Annotated[int, Field(ge=0, description="an integer >= 0")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="a sha256 hex digest (64 hex digits)")]


class _Row(BaseModel):
    """Strict types (no "3" for 3, no true for 1); columns not declared are kept (passed through)."""

    model_config = ConfigDict(strict=True, extra="allow")


class ChatMessage(BaseModel):
    """One chat turn: `{"role": system|user|assistant, "content": str}` (other keys are dropped)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    role: Role
    content: str


Messages = Annotated[
    list[ChatMessage], Field(min_length=1, description="a non-empty list of {role, content} objects")
]


class InstructionRecord(_Row):
    """An instruction to answer (INSTRUCTION_SCHEMA): the input of generation."""

    id: str
    messages: Messages
    eval_set: str | None = None
    item: Count | None = None
    lang: str | None = None
    task: str | None = None
    modifier_type: str | None = None
    modifier_arg: str | None = None
    base_instruction: str | None = None


class TrainingRecord(_Row):
    """A Dolly-style training record (TRANSLATION_SCHEMA; JSONL lines need only instruction and response)."""

    instruction: str
    response: str
    context: str | None = None
    lang: str | None = None
    flags: list[str] | None = None  # translation quality flags: [] = clean


Turns = Annotated[list[str], Field(min_length=2, description="a list of >= 2 strings (user, assistant, ...)")]


class LimaRecord(_Row):
    """A LIMA training record: `conversations` (user, assistant, ... strings) or `messages`."""

    conversations: Turns | None = None
    messages: Messages | None = None
    lang: str | None = None

    @model_validator(mode="after")
    def _one_chat(self) -> LimaRecord:
        if self.messages is not None:
            if not any(m.role == "assistant" for m in self.messages):
                raise ValueError("field 'messages' has no assistant message")
        elif self.conversations is None:
            raise ValueError("needs field 'conversations' (user, assistant, ... strings) or 'messages'")
        return self

    def chat(self) -> list[dict[str, str]]:
        """The record as chat messages (conversations alternate user, assistant, ...)."""
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        turns = self.conversations or []
        return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


class GenerationRow(_Row):
    """One model response (GENERATION_OUTPUT_SCHEMA): `response` is null when `error` says why."""

    id: str
    messages: Messages
    response: str | None = None
    prompt_tokens: Count | None = None
    response_tokens: Count | None = None
    finish_reason: str | None = None
    model: str | None = None
    decoding: str | None = None
    error: str | None = None


class ScoringInput(GenerationRow):
    """A response to score (evalsuite.score): a generation row with its instruction's language, a response,
    a user message, and the argument of lang/num_items modifiers."""

    lang: str
    response: str  # type: ignore[assignment]
    task: str | None = None
    modifier_type: str | None = None
    modifier_arg: str | None = None

    @model_validator(mode="after")
    def _answerable(self) -> ScoringInput:
        if not any(m.role == "user" for m in self.messages):
            raise ValueError("field 'messages' has no user message")
        if self.modifier_type in ("lang", "num_items") and not self.modifier_arg:
            raise ValueError(f"modifier_type {self.modifier_type!r} needs field 'modifier_arg'")
        return self


class ScoreRow(_Row):
    """The scores of one response (SCORE_SCHEMA). Null means "not measured", never "failed"."""

    id: str
    lang: str
    expected_lang: str | None = None
    lang_pred: str | None = None
    lang_prob: float | None = None
    lang_correct: bool | None = None
    code_switch_rate: float | None = None
    spell_ok_rate: float | None = None
    relevance: Annotated[int, Field(ge=0, le=1, description="0 or 1")] | None = None
    relevance_status: Status | None = None
    relevance_raw: str | None = None
    judge_language: Score | None = None
    judge_helpfulness: Score | None = None
    judge_fluency: Score | None = None
    judge_factuality: Score | None = None
    judge_logic: Score | None = None
    judge_harmlessness: Score | None = None
    judge_status: Status | None = None
    judge_raw: str | None = None
    judge_error: str | None = None
    modifier_ok: bool | None = None
    modifier_status: Status | None = None
    modifier_detail: str | None = None
    judge_helpfulness_mod: Score | None = None
    judge_language_expected: float | None = None
    judge_helpfulness_expected: float | None = None
    judge_fluency_expected: float | None = None
    judge_factuality_expected: float | None = None
    judge_logic_expected: float | None = None
    judge_harmlessness_expected: float | None = None
    relevance_expected: float | None = None


class HumanRating(_Row):
    """One annotator's ratings of one response (HUMAN_SCHEMA)."""

    run: str
    id: str
    lang: str
    annotator: str
    item: Count | None = None
    task: str | None = None
    language: Score | None = None
    helpfulness: Score | None = None
    fluency: Score | None = None
    factuality: Score | None = None
    logic: Score | None = None
    harmlessness: Score | None = None
    uid: str | None = None
    packet: str | None = None


class CriterionScores(BaseModel):
    """One response's ratings on the annotation page: {criterion: 0|1|2|null}, criteria as the judge's."""

    model_config = ConfigDict(strict=True, extra="forbid")

    language: Score | None = None
    helpfulness: Score | None = None
    fluency: Score | None = None
    factuality: Score | None = None
    logic: Score | None = None
    harmlessness: Score | None = None


class RatingsExport(BaseModel):
    """The JSON an annotation page exports (reporting.human): packet, page language, annotator, ratings."""

    model_config = ConfigDict(strict=True, extra="ignore")

    packet: str
    lang: str
    annotator: str
    ratings: dict[str, CriterionScores]

    @field_validator("annotator")
    @classmethod
    def _named(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is empty")
        return v.strip()

    @classmethod
    def error_text(cls, loc: tuple[Any, ...], err: dict[str, Any]) -> str | None:
        """The import's own wording for a bad ratings file (`describe` asks a model for it first)."""
        if loc[:1] == ("annotator",):
            return "field 'annotator' missing or empty (the annotator must enter a name)"
        if loc[:1] == ("ratings",) and len(loc) == 1:
            return "field 'ratings' missing or not an object"
        if loc[:1] == ("ratings",) and len(loc) == 2:
            return f"uid {loc[1]!r}: expected an object {{criterion: 0|1|2}}"
        if loc[:1] == ("ratings",) and err["type"] == "extra_forbidden":
            return f"uid {loc[1]!r}: unknown criterion {loc[2]!r} (expected {list(JUDGE_CRITERIA)})"
        if loc[:1] == ("ratings",):
            return f"uid {loc[1]!r}: {loc[2]} = {err['input']!r} is not a score 0, 1 or 2"
        return None


class DeadLetter(_Row):
    """A record a pipeline could not process (DEAD_LETTER_SCHEMA)."""

    id: str
    stage: str
    reason: str
    record: str | None = None  # the record as JSON


# ----------------------------------------------------------------------------------------------- errors


def check(model: type[M], value: Any, where: str, error: type[InputError] = RecordError) -> M:
    """`value` validated as `model`; `error` (an InputError) naming `where` and the field otherwise."""
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise error(describe(model, e, where)) from None


def describe(model: type[BaseModel], exc: ValidationError, where: str) -> str:
    """The first problem of `exc` as one line: `where: field 'a[1].b' must be a string (null)`."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    custom = getattr(model, "error_text", None)
    text = custom(loc, err) if custom is not None else None
    if text:
        return f"{where}: {text}"
    kind = err["type"]
    if not loc:
        if kind in ("model_type", "dict_type", "model_attributes_type"):
            return f"{where}: expected a JSON object, got {_kind(err['input'])}"
        return f"{where}: {_reason(err)}"
    name = loc_text(loc)
    desc, annotation = _field(model, loc)
    expected = _or_null(desc, annotation) if desc else _expect(annotation)
    if kind == "missing":
        return f"{where}: field {name!r} must be {expected} (missing)"
    if kind == "literal_error":
        return f"{where}: field {name!r} is {_short(err['input'])}, expected {expected}"
    if kind == "extra_forbidden":
        return f"{where}: unknown field {name!r}"
    if kind in ("value_error", "assertion_error"):
        return f"{where}: field {name!r} {_reason(err)}"
    typed = kind.endswith("_type") or kind.endswith("_parsing") or kind == "none_required"
    got = _kind(err["input"]) if typed else f"got {_short(err['input'])}"
    return f"{where}: field {name!r} must be {expected} ({got})"


def loc_text(loc: tuple[Any, ...]) -> str:
    """('messages', 1, 'role') -> 'messages[1].role'; a dict key that is no identifier in brackets: 'a["x.y"]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out and not str(part).isidentifier():
            out += f'["{part}"]'
        else:
            out += f".{part}" if out else str(part)
    return out


def _reason(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    return str(ctx["error"]) if "error" in ctx else str(err["msg"])


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)) and not value:
        return "empty list"
    return type(value).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unwrap(tp: Any) -> Any:
    """X | None -> X; Annotated[X, ...] -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _nullable(tp: Any) -> bool:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def _field(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str | None, Any]:
    """The description (Field(description=...)) and the annotation of what `loc` points to, when known."""
    tp: Any = model
    desc: str | None = None
    for part in loc:
        desc = None
        inner = _unwrap(tp)
        origin = typing.get_origin(inner)
        if isinstance(inner, type) and issubclass(inner, BaseModel) and isinstance(part, str):
            if part not in inner.model_fields:
                return None, None
            info = inner.model_fields[part]
            tp, desc = info.annotation, info.description
        elif origin is list and isinstance(part, int):
            tp = typing.get_args(inner)[0]
        elif origin is dict:
            tp = typing.get_args(inner)[1]
        else:
            return None, None
    return desc or _description(tp), tp


def _description(tp: Any) -> str | None:
    """The description of an `Annotated[X, Field(description=...)]`, also inside `... | None`."""
    candidates = [tp]
    if typing.get_origin(tp) in (Union, types.UnionType):
        candidates = list(typing.get_args(tp))
    for c in candidates:
        if typing.get_origin(c) is Annotated:
            for m in typing.get_args(c)[1:]:
                if isinstance(m, FieldInfo) and m.description:
                    return m.description
    return None


def _or_null(text: str, tp: Any) -> str:
    if not _nullable(tp):
        return text
    return f"{text}, or null" if " or " in text else f"{text} or null"


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object"}


def _expect(tp: Any) -> str:
    """What a value of annotation `tp` must be, in words."""
    if tp is None:
        return "valid"
    inner = _unwrap(tp)
    origin = typing.get_origin(inner)
    if origin is Literal:
        names = [str(a) for a in typing.get_args(inner)]
        text = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        return _or_null(text, tp)
    if origin is list:
        text = "a list"
    elif origin is dict:
        text = "an object"
    elif isinstance(inner, type) and issubclass(inner, BaseModel):
        text = "an object"
    else:
        text = _NAMES.get(inner, getattr(inner, "__name__", str(inner)))
    return _or_null(text, tp)
