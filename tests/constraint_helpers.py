"""JSON Schemas shared by the constraint tests (tests/test_json_constraint.py, tests/test_infer_decode.py,
tests/test_infer_server.py), each with a hand-written check of a reply."""

from __future__ import annotations

import re
from typing import Any

RICH_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "grade": {"enum": ["A", "B", "C"]},
        "score": {"type": "integer", "minimum": -5, "maximum": 40},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{1,4}$"}, "maxItems": 3},
        "note": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/point"}]},
    },
    "required": ["name", "grade", "score", "ok", "tags"],
    "additionalProperties": False,
    "$defs": {
        "point": {
            "type": "object",
            "properties": {"x": {"type": "integer"}},
            "required": ["x"],
            "additionalProperties": False,
        }
    },
}


def check_rich(obj) -> None:
    """RICH_SCHEMA, checked by hand."""
    assert isinstance(obj, dict) and set(obj) <= set(RICH_SCHEMA["properties"]), obj
    assert {"name", "grade", "score", "ok", "tags"} <= set(obj), obj
    assert isinstance(obj["name"], str) and len(obj["name"]) <= 12
    assert obj["grade"] in ("A", "B", "C")
    assert type(obj["score"]) is int and -5 <= obj["score"] <= 40
    assert type(obj["ok"]) is bool
    assert isinstance(obj["tags"], list) and len(obj["tags"]) <= 3
    assert all(isinstance(t, str) and re.fullmatch("[a-z]{1,4}", t) for t in obj["tags"])
    note = obj.get("note")
    assert note is None or (set(note) == {"x"} and type(note["x"]) is int), note


# strings, a required nested object, an array of objects holding arrays, a nullable number
BOOK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 16},
        "author": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "born": {"type": "integer", "minimum": 1800, "maximum": 2000},
            },
            "required": ["name", "born"],
            "additionalProperties": False,
        },
        "chapters": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer", "minimum": 1},
                    "pages": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999}},
                },
                "required": ["n", "pages"],
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": 3,
        },
        "rating": {"type": ["number", "null"]},
    },
    "required": ["title", "author", "chapters", "rating"],
    "additionalProperties": False,
}


def check_book(obj) -> None:
    """BOOK_SCHEMA, checked by hand (properties in schema order, as the server writes them)."""
    assert isinstance(obj, dict) and list(obj) == ["title", "author", "chapters", "rating"], obj
    assert isinstance(obj["title"], str) and 1 <= len(obj["title"]) <= 16, obj
    author = obj["author"]
    assert isinstance(author, dict) and list(author) == ["name", "born"], obj
    assert isinstance(author["name"], str) and len(author["name"]) <= 12, obj
    assert type(author["born"]) is int and 1800 <= author["born"] <= 2000, obj
    chapters = obj["chapters"]
    assert isinstance(chapters, list) and 1 <= len(chapters) <= 3, obj
    for ch in chapters:
        assert isinstance(ch, dict) and list(ch) == ["n", "pages"], obj
        assert type(ch["n"]) is int and ch["n"] >= 1, obj
        assert isinstance(ch["pages"], list), obj
        assert all(type(p) is int and 0 <= p <= 999 for p in ch["pages"]), obj
    rating = obj["rating"]
    assert rating is None or (type(rating) in (int, float) and rating == rating), obj  # not NaN
