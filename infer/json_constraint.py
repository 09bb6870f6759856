"""Token-level JSON-object constraint: output is always a valid JSON object that `json.loads` to a dict.

A byte-level JSON state machine (mode + a stack of open objects/arrays) runs over the text generated so
far. For a state, every vocabulary token is simulated at once with numpy (`_simulate`): a token is allowed
if all its bytes are accepted, and we also get the length of the shortest text that closes the JSON from
where the token leaves it. At a step with `remaining` tokens left, only tokens whose closing length fits in
`remaining - 1` are allowed, so the object is always closed in time (every closing character is a
single-byte token). Once the object is complete only EOS is allowed. Masks are cached per state.

Grammar: one top-level object; strings with simple escapes (no \\u); numbers; true/false/null; nested
objects and arrays; whitespace between tokens. Special tokens are never allowed inside the JSON.
"""

from __future__ import annotations

import json

import numpy as np

# modes
(
    START,
    OBJ_FIRST,  # after "{": key or "}"
    OBJ_KEY,  # after "," in an object: a key
    KEY,
    KEY_ESC,
    AFTER_KEY,
    VALUE,
    ARR_FIRST,  # after "[": value or "]"
    STR,
    STR_ESC,
    AFTER_VALUE,
    NUM_SIGN,
    NUM_ZERO,
    NUM_INT,
    NUM_FRAC0,
    NUM_FRAC,
    NUM_EXP0,
    NUM_EXP_SIGN,
    NUM_EXP,
    DONE,
) = range(20)
_LITERALS = ("true", "false", "null")
_LIT_BASE = 20  # one mode per literal character still to come
_LIT_MODES: dict[int, str] = {}  # mode -> the rest of the literal
for _lit in _LITERALS:
    for _k in range(1, len(_lit)):
        _LIT_MODES[_LIT_BASE + len(_LIT_MODES)] = _lit[_k:]
NUM_MODES = _LIT_BASE + len(_LIT_MODES)

# actions (negative table entries)
INV, PUSH_O, PUSH_A, COMMA, CLOSE_O, CLOSE_A = -1, -2, -3, -4, -5, -6
_WS = b" \t\n\r"
_DIGITS = b"0123456789"
_ESCAPES = b'"\\/bfnrt'
_MAX_TOKEN_BYTES = 48

# the shortest text that finishes the current value (before the closing brackets)
_CLOSE_EXTRA = np.zeros(NUM_MODES, np.int32)
for _m, _n in {START: 2, OBJ_KEY: 4, KEY: 3, KEY_ESC: 4, AFTER_KEY: 2, VALUE: 1, STR: 1, STR_ESC: 2}.items():
    _CLOSE_EXTRA[_m] = _n
for _m in (NUM_SIGN, NUM_FRAC0, NUM_EXP0, NUM_EXP_SIGN):
    _CLOSE_EXTRA[_m] = 1
for _m, _rest in _LIT_MODES.items():
    _CLOSE_EXTRA[_m] = len(_rest)
_CLOSE_TEXT = {START: "{}", OBJ_KEY: '"":0', KEY: '":0', KEY_ESC: 'n":0', AFTER_KEY: ":0", VALUE: "0"}
_CLOSE_TEXT.update({STR: '"', STR_ESC: 'n"', NUM_SIGN: "0", NUM_FRAC0: "0", NUM_EXP0: "0", NUM_EXP_SIGN: "0"})
_CLOSE_TEXT.update(_LIT_MODES)


def _table() -> np.ndarray:
    t = np.full((NUM_MODES, 256), INV, np.int16)

    def on(mode: int, chars: bytes, action: int) -> None:
        for c in chars:
            t[mode, c] = action

    def value_start(mode: int) -> None:
        on(mode, _WS, mode)
        on(mode, b'"', STR)
        on(mode, b"{", PUSH_O)
        on(mode, b"[", PUSH_A)
        on(mode, b"-", NUM_SIGN)
        on(mode, b"0", NUM_ZERO)
        on(mode, b"123456789", NUM_INT)
        for lit in _LITERALS:
            first = next(m for m, rest in _LIT_MODES.items() if rest == lit[1:])
            on(mode, lit[:1].encode(), first)

    def string(mode: int, esc: int, end: int) -> None:
        t[mode, 0x20:] = mode
        t[mode, ord('"')] = end
        t[mode, ord("\\")] = esc
        on(esc, _ESCAPES, mode)

    def value_end(mode: int) -> None:  # what may follow a complete value
        on(mode, _WS, AFTER_VALUE)
        on(mode, b",", COMMA)
        on(mode, b"}", CLOSE_O)
        on(mode, b"]", CLOSE_A)

    on(START, _WS, START)
    on(START, b"{", PUSH_O)
    on(OBJ_FIRST, _WS, OBJ_FIRST)
    on(OBJ_FIRST, b'"', KEY)
    on(OBJ_FIRST, b"}", CLOSE_O)
    on(OBJ_KEY, _WS, OBJ_KEY)
    on(OBJ_KEY, b'"', KEY)
    string(KEY, KEY_ESC, AFTER_KEY)
    on(AFTER_KEY, _WS, AFTER_KEY)
    on(AFTER_KEY, b":", VALUE)
    value_start(VALUE)
    value_start(ARR_FIRST)
    on(ARR_FIRST, b"]", CLOSE_A)
    string(STR, STR_ESC, AFTER_VALUE)
    value_end(AFTER_VALUE)
    on(AFTER_VALUE, _WS, AFTER_VALUE)
    on(NUM_SIGN, b"0", NUM_ZERO)
    on(NUM_SIGN, b"123456789", NUM_INT)
    for m in (NUM_ZERO, NUM_INT):
        on(m, b".", NUM_FRAC0)
        on(m, b"eE", NUM_EXP0)
        value_end(m)
    on(NUM_INT, _DIGITS, NUM_INT)
    on(NUM_FRAC0, _DIGITS, NUM_FRAC)
    on(NUM_FRAC, _DIGITS, NUM_FRAC)
    on(NUM_FRAC, b"eE", NUM_EXP0)
    value_end(NUM_FRAC)
    on(NUM_EXP0, b"+-", NUM_EXP_SIGN)
    on(NUM_EXP0, _DIGITS, NUM_EXP)
    on(NUM_EXP_SIGN, _DIGITS, NUM_EXP)
    on(NUM_EXP, _DIGITS, NUM_EXP)
    value_end(NUM_EXP)
    for m, rest in _LIT_MODES.items():
        nxt = m + 1 if len(rest) > 1 else AFTER_VALUE
        on(m, rest[:1].encode(), nxt)
    return t


TABLE = _table()


def _simulate(mode: int, stack: tuple[int, ...], data: np.ndarray, lengths: np.ndarray):
    """Runs every token (bytes `data` [V,W], `lengths` [V]) from one state.

    Returns (valid [V] bool, closing length [V] int) — the closing length of the state each token ends in.
    """
    v, w = data.shape
    depth0 = len(stack)
    st = np.zeros((v, depth0 + w + 1), np.int8)
    if depth0:
        st[:, :depth0] = stack
    depth = np.full(v, depth0, np.int32)
    modes = np.full(v, mode, np.int32)
    valid = lengths > 0
    rows = np.arange(v)
    for j in range(w):
        act_rows = valid & (j < lengths)
        if not act_rows.any():
            break
        idx = rows[act_rows]
        m, d = modes[idx], depth[idx]
        act = TABLE[m, data[idx, j]].astype(np.int32)
        top = np.where(d > 0, st[idx, np.maximum(d - 1, 0)], 0)
        new_m = np.where(act >= 0, act, m)
        bad = act == INV
        push = (act == PUSH_O) | (act == PUSH_A)
        st[idx[push], d[push]] = np.where(act[push] == PUSH_O, 1, 2)
        new_m = np.where(act == PUSH_O, OBJ_FIRST, np.where(act == PUSH_A, ARR_FIRST, new_m))
        d = d + push
        comma = act == COMMA
        new_m = np.where(comma, np.where(top == 1, OBJ_KEY, VALUE), new_m)
        close = (act == CLOSE_O) | (act == CLOSE_A)
        bad |= close & (top != np.where(act == CLOSE_O, 1, 2))
        d = d - close
        new_m = np.where(close, np.where(d == 0, DONE, AFTER_VALUE), new_m)
        modes[idx], depth[idx] = new_m, d
        valid[idx[bad]] = False
    return valid, _CLOSE_EXTRA[modes] + depth


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (byte-level BPE vocabularies)."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def token_bytes(tokenizer) -> list[bytes | None]:
    """The bytes each token id stands for (None for special/added tokens)."""
    tok = tokenizer.tok if hasattr(tokenizer, "tok") else tokenizer
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    special = set(tok.all_special_ids) | {int(i) for i in getattr(tok, "added_tokens_decoder", {})}
    byte_level = sum("Ġ" in p for p in pieces if p) > 100
    if byte_level:
        dec = {c: b for b, c in _bytes_to_unicode().items()}
    out: list[bytes | None] = []
    for i, p in enumerate(pieces):
        if i in special or p is None:
            out.append(None)
        elif byte_level:
            out.append(bytes(dec[c] for c in p) if all(c in dec for c in p) else None)
        elif len(p) == 6 and p.startswith("<0x") and p.endswith(">"):
            out.append(bytes([int(p[3:5], 16)]))
        else:
            out.append(p.replace("▁", " ").encode("utf-8"))
    return out


class JsonVocab:
    """Per-tokenizer tables shared by all constraints: token bytes and a mask cache per state."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: list[int]):
        pieces = token_bytes(tokenizer)[:vocab_size]
        pieces += [None] * (vocab_size - len(pieces))
        self.lengths = np.array([len(p) if p and len(p) <= _MAX_TOKEN_BYTES else 0 for p in pieces], np.int32)
        width = int(self.lengths.max())
        self.data = np.zeros((vocab_size, width), np.uint8)
        for i, p in enumerate(pieces):
            if self.lengths[i]:
                self.data[i, : len(p)] = np.frombuffer(p, np.uint8)
        self.pieces = pieces
        self.vocab_size = vocab_size
        self.eos = np.zeros(vocab_size, bool)
        self.eos[[e for e in eos_ids if 0 <= e < vocab_size]] = True
        self._cache: dict[tuple[int, tuple[int, ...]], tuple[np.ndarray, np.ndarray]] = {}

    def masks(self, mode: int, stack: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        key = (mode, stack)
        if key not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = _simulate(mode, stack, self.data, self.lengths)
        return self._cache[key]


class JsonObjectConstraint:
    """The state of one row: feed it each generated token; ask which tokens may come next."""

    def __init__(self, vocab: JsonVocab):
        self.vocab = vocab
        self.mode = START
        self.stack: list[int] = []

    @property
    def complete(self) -> bool:
        return self.mode == DONE

    def closing_text(self) -> str:
        brackets = "".join("}" if s == 1 else "]" for s in reversed(self.stack))
        return _CLOSE_TEXT.get(self.mode, "") + brackets

    def allowed(self, remaining: int) -> np.ndarray:
        if self.mode == DONE:
            return self.vocab.eos.copy()
        valid, close = self.vocab.masks(self.mode, tuple(self.stack))
        ok = valid & (close <= remaining - 1)
        if not ok.any():  # cannot happen when remaining >= closing length; keep the decode defined
            ok = valid
        return ok

    def advance(self, token: int) -> None:
        piece = self.vocab.pieces[token] if token < len(self.vocab.pieces) else None
        if self.mode == DONE or piece is None:
            return
        for c in piece:
            act = int(TABLE[self.mode, c])
            top = self.stack[-1] if self.stack else 0
            if act >= 0:
                self.mode = act
            elif act in (PUSH_O, PUSH_A):
                self.stack.append(1 if act == PUSH_O else 2)
                self.mode = OBJ_FIRST if act == PUSH_O else ARR_FIRST
            elif act == COMMA:
                self.mode = OBJ_KEY if top == 1 else VALUE
            elif act in (CLOSE_O, CLOSE_A) and top == (1 if act == CLOSE_O else 2):
                self.stack.pop()
                self.mode = DONE if not self.stack else AFTER_VALUE
            else:
                raise ValueError(f"token {token} ({piece!r}) is not allowed in JSON state {self.mode}")


# ----------------------------------------------------------------------------- JSON schema: integer objects

MAX_RANGE = 10_000  # most integer values one property may take


def parse_int_object_schema(response_format: dict) -> tuple[tuple[str, int, int], ...]:
    """Fields (key, minimum, maximum) of an OpenAI `json_schema` response format, in property order.

    Supported: a flat object whose properties are all required integers with a minimum and a maximum (or
    an `enum` of integers' range), no other properties. Anything else raises ValueError naming the field.
    """
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise ValueError("response_format.json_schema.schema must be an object")
    schema = spec["schema"]
    props = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(props, dict) or not props:
        raise ValueError("json_schema: only an object with properties is supported")
    required = schema.get("required", list(props))
    if sorted(required) != sorted(props):
        raise ValueError("json_schema: every property must be required")
    if schema.get("additionalProperties", False) is not False:
        raise ValueError("json_schema: additionalProperties must be false")
    fields = []
    for key, p in props.items():
        where = f"json_schema.properties.{key}"
        if not isinstance(p, dict) or p.get("type") != "integer":
            raise ValueError(f"{where}: only integer properties are supported")
        lo, hi = p.get("minimum"), p.get("maximum")
        if isinstance(p.get("enum"), list) and p["enum"] and all(type(v) is int for v in p["enum"]):
            lo, hi = min(p["enum"]), max(p["enum"])
            if sorted(p["enum"]) != list(range(lo, hi + 1)):
                raise ValueError(f"{where}: enum must be a contiguous integer range")
        if type(lo) is not int or type(hi) is not int or not lo <= hi or hi - lo >= MAX_RANGE:
            raise ValueError(f"{where}: needs integer minimum <= maximum (at most {MAX_RANGE} values)")
        fields.append((key, lo, hi))
    return tuple(fields)


class IntObjectDFA:
    """Byte DFA of `{"K1": v1, "K2": v2, ...}` (json.dumps layout) with each v_i an integer in its range.

    `table[state, byte]` is the next state or -1; `dist[state]` the fewest bytes to the end. Masks over the
    vocabulary are computed per state (every token simulated at once) and cached.
    """

    def __init__(self, fields: tuple[tuple[str, int, int], ...], vocab: JsonVocab):
        self.vocab = vocab
        trans: list[dict[int, int]] = [{}]

        def new() -> int:
            trans.append({})
            return len(trans) - 1

        def literal(states: list[int], text: str) -> int:
            data = text.encode("utf-8")
            first = new()
            for s in states:
                trans[s][data[0]] = first
            cur = first
            for b in data[1:]:
                nxt = new()
                trans[cur][b] = nxt
                cur = nxt
            return cur

        ends = [0]
        for i, (key, lo, hi) in enumerate(fields):
            cur = literal(ends, ("{" if i == 0 else ", ") + json.dumps(key) + ": ")
            ends = []
            for v in range(lo, hi + 1):  # a trie of the allowed value strings
                node = cur
                for b in str(v).encode():
                    node = trans[node].get(b) or trans[node].setdefault(b, new())
                ends.append(node)
            ends = sorted(set(ends))
        self.accept = literal(ends, "}")
        self.table = np.full((len(trans), 256), -1, np.int32)
        for s, t in enumerate(trans):
            for b, nxt in t.items():
                self.table[s, b] = nxt
        self.dist = self._distances()
        self._masks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _distances(self) -> np.ndarray:
        n = len(self.table)
        dist = np.full(n, np.iinfo(np.int32).max // 2, np.int32)
        dist[self.accept] = 0
        changed = True
        while changed:  # Bellman-Ford on a small DAG
            nxt = np.where(self.table >= 0, dist[np.maximum(self.table, 0)] + 1, dist.max())
            new = np.minimum(dist, nxt.min(axis=1))
            changed = bool((new != dist).any())
            dist = new
        return dist

    def masks(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        if state not in self._masks:
            data, lengths = self.vocab.data, self.vocab.lengths
            cur = np.full(len(lengths), state, np.int32)
            valid = lengths > 0
            for j in range(data.shape[1]):
                act = np.flatnonzero(valid & (j < lengths))
                if not len(act):
                    break
                nxt = self.table[cur[act], data[act, j]]
                valid[act[nxt < 0]] = False
                cur[act] = np.maximum(nxt, 0)
            self._masks[state] = (valid, self.dist[cur])
        return self._masks[state]


class IntObjectConstraint:
    """One row decoding under an IntObjectDFA (same protocol as JsonObjectConstraint)."""

    def __init__(self, dfa: IntObjectDFA):
        self.dfa = dfa
        self.state = 0

    @property
    def complete(self) -> bool:
        return self.state == self.dfa.accept

    def allowed(self, remaining: int) -> np.ndarray:
        if self.complete:
            return self.dfa.vocab.eos.copy()
        valid, dist = self.dfa.masks(self.state)
        ok = valid & (dist <= remaining - 1)
        return ok if ok.any() else valid

    def advance(self, token: int) -> None:
        piece = self.dfa.vocab.pieces[token] if token < len(self.dfa.vocab.pieces) else None
        if self.complete or piece is None:
            return
        for b in piece:
            nxt = int(self.dfa.table[self.state, b])
            if nxt < 0:
                raise ValueError(
                    f"token {token} ({piece!r}) is not allowed by the schema in state {self.state}"
                )
            self.state = nxt
