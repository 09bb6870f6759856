"""Grammar-constrained decoding on llguidance: per-row token masks, plus a token budget the library lacks.

llguidance compiles a grammar (here: JSON Schema, see infer.json_constraint) and, for the tokens consumed so
far, computes the set of vocabulary tokens that keep the text a prefix of a valid document (`compute mask`).
`TokenTable` is built once per tokenizer (our own byte table, `token_bytes`, so byte-level BPE and
SentencePiece vocabularies both work); `GrammarConstraint` is one row's matcher and implements the engine's
`Constraint` protocol (`allowed(remaining)`, `advance(token)`).

Budget. A reply cut at `max_tokens` must still parse, which the library does not ensure. The constraint
computes a *closing path* for the current state: forced bytes as greedy longest-match tokens, then at each
choice a one-byte token — a closer (`"}]`) after which the document may end, else the first byte of
`CLOSE_PREFERENCE` the grammar allows — until the document is complete. The path depends only on the state, so
following it from the next state gives the rest of it. With `remaining` tokens left and a path of L tokens:
* mask larger than `SMALL_MASK` (free text, digits) and L + `SLACK` < remaining, or a small mask and
  L + `SLACK` + `VERIFY_WINDOW` < remaining: the library's mask as is;
* otherwise each candidate token is checked — allowed only if the closing path after it fits in
  `remaining - 1` tokens. Candidates are the whole mask when it is small (structural choices such as `,` vs
  `]`), else its one-byte ASCII tokens. The first token of the current path always passes when L <= remaining,
  so by induction the document is complete in time (assuming no free token grows the path by more than
  `SLACK`, true for JSON syntax); with fewer tokens left it is forced anyway (the reply ends `length`). A
  grammar the path cannot close within `WALK_LIMIT` tokens gets the library's mask only.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper

SLACK = 8  # free steps keep this many spare tokens beyond the closing path
SMALL_MASK = 64  # masks with at most this many tokens are checked token by token near the budget
VERIFY_WINDOW = 64  # small masks are checked once fewer than L + SLACK + this many tokens are left
WALK_LIMIT = 512  # longest closing path searched (tokens)
# byte order tried at each choice of the closing path: close strings/containers first, end a value (`,` before
# digits, or a number with a lower bound such as 1 would grow digit by digit), then short values (printable
# ASCII, then UTF-8 continuation bytes to finish a character a token left open)
CLOSE_PREFERENCE = (
    b'"}]:,0123456789tfn'
    + bytes(b for b in range(0x20, 0x7F) if b not in b'"}]:,0123456789tfn')
    + bytes(range(0x80, 0xC0))
)


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


class _Vocab:
    """What llguidance's TokenizerWrapper reads: every token's bytes, special ids, EOS, an encoder."""

    def __init__(self, tokenizer, pieces: list[bytes | None], eos_id: int):
        self._tok = tokenizer.tok if hasattr(tokenizer, "tok") else tokenizer
        # special tokens are matched by name; llguidance never allows them inside a grammar (except EOS)
        self.tokens = [p if p is not None else f"<|xlit_special_{i}|>".encode() for i, p in enumerate(pieces)]
        self.special_token_ids = [i for i, p in enumerate(pieces) if p is None]
        self.eos_token_id = eos_id
        self.bos_token_id = None

    def __call__(self, text: str | bytes) -> list[int]:
        """Token ids of `text` (llguidance calls this while computing masks: the Rust backend when there is one)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        backend = getattr(self._tok, "backend_tokenizer", None)
        if backend is not None:
            return backend.encode(text, add_special_tokens=False).ids
        return self._tok(text, add_special_tokens=False)["input_ids"]


class TokenTable:
    """Per tokenizer: llguidance's tokenizer, one-byte token ids, EOS mask, and a matcher per grammar."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: Sequence[int]):
        eos = [int(e) for e in eos_ids if 0 <= e < vocab_size]
        if not eos:
            raise ValueError(f"TokenTable: no EOS id within the vocabulary ({list(eos_ids)})")
        pieces = token_bytes(tokenizer)[:vocab_size]
        pieces += [None] * (vocab_size - len(pieces))
        self.pieces = pieces
        self.vocab_size = vocab_size
        self.eos = np.zeros(vocab_size, bool)
        self.eos[eos] = True
        self.eos_ids = np.array(eos)
        self.byte_token = np.full(256, -1, np.int64)  # a token id that is exactly this one byte
        for i, p in enumerate(pieces):
            if p is not None and len(p) == 1 and self.byte_token[p[0]] < 0:
                self.byte_token[p[0]] = i
        ascii_ids = self.byte_token[
            [b for b in b" \t\n\r" + bytes(range(0x21, 0x7F)) if self.byte_token[b] >= 0]
        ]
        self.single = np.zeros(vocab_size, bool)  # one-byte tokens of printable ASCII and whitespace
        self.single[ascii_ids] = True
        self._prefs = [int(self.byte_token[b]) for b in CLOSE_PREFERENCE if self.byte_token[b] >= 0]
        self._eos0 = eos[0]
        self._n_closers = sum(self.byte_token[b] >= 0 for b in CLOSE_PREFERENCE[:3])  # '"', '}', ']'
        wrapper = TokenizerWrapper(_Vocab(tokenizer, pieces, eos[0]))
        self.llt = LLTokenizer(wrapper, n_vocab=vocab_size, eos_token=eos)
        self._words = (vocab_size + 31) // 32
        self._matchers: dict[str, LLMatcher] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ grammars

    def matcher(self, grammar: str) -> LLMatcher:
        """A fresh matcher at the start of `grammar` (compiled once per grammar; ValueError if invalid)."""
        with self._lock:
            m = self._matchers.get(grammar)
            if m is None:
                m = LLMatcher(self.llt, grammar, log_level=0)
                if m.is_error():
                    raise ValueError(m.get_error())
                if len(self._matchers) >= 64:
                    self._matchers.clear()
                self._matchers[grammar] = m
            return m.deep_copy()

    def constraint(self, grammar: str) -> GrammarConstraint:
        return GrammarConstraint(self, self.matcher(grammar))

    def min_tokens(self, grammar: str) -> int | None:
        """Tokens of the closing path from the start: an upper bound on the shortest valid reply (None:
        none found within WALK_LIMIT)."""
        path = self.closing_path(self.matcher(grammar), WALK_LIMIT)
        return None if path is None else len(path)

    # ------------------------------------------------------------------------------------------ masks

    def mask(self, m: LLMatcher) -> np.ndarray:
        """bool [V]: the tokens `m` allows next (all EOS ids when it allows EOS)."""
        bits = np.zeros(self._words, np.int32)
        m.unsafe_compute_mask_ptr(bits.ctypes.data, bits.nbytes)
        out = np.unpackbits(bits.view(np.uint8), count=self.vocab_size, bitorder="little").view(bool)
        if out[self.eos_ids].any():
            out[self.eos_ids] = True
        return out

    def _tokenize(self, data: bytes) -> list[int]:
        """Greedy longest-match tokens of `data`: the tokens after the first are the greedy tokens of the rest,
        so a closing path stays the same as it is followed."""
        try:
            return self.llt.greedy_tokenize(data.decode("utf-8"))
        except UnicodeDecodeError:
            return [int(self.byte_token[b]) for b in data if self.byte_token[b] >= 0]

    def closing_path(self, m: LLMatcher, limit: int) -> list[int] | None:
        """Tokens that complete the document from `m`'s state (m is left as is): forced bytes (greedy tokens),
        then at each choice a one-byte token: a closer (`"}]`) that completes the document, else the first
        allowed byte of CLOSE_PREFERENCE. None if longer than `limit`."""
        m = m.deep_copy()
        path: list[int] = []
        while not m.is_accepting():
            if len(path) >= limit or m.is_stopped():
                return None
            forced = m.compute_ff_bytes()
            if forced:
                toks = self._tokenize(forced)
                n = m.try_consume_tokens(toks)
                path += toks[:n]
                if n:
                    continue
            first = None
            for i, t in enumerate(
                self._prefs
            ):  # a closer that completes the document, else the first allowed
                if i >= self._n_closers and first is not None:
                    break
                ok = m.validate_tokens([t, self._eos0] if i < self._n_closers else [t])
                if ok == 0:
                    continue
                first = t if first is None else first
                if ok == 2:  # the document may end right after t
                    first = t
                    break
            if first is None:
                return None
            m.consume_token(first)
            path.append(first)
        return path if len(path) <= limit else None


class GrammarConstraint:
    """One row decoding under a grammar: feed it each generated token; ask which tokens may come next."""

    def __init__(self, table: TokenTable, matcher: LLMatcher):
        self.table = table
        self.m = matcher
        self._path: tuple[int, list[int] | None] | None = None  # (tokens consumed, closing path) cache
        self.n = 0  # tokens consumed

    @property
    def complete(self) -> bool:
        """The document is complete and nothing but EOS may follow."""
        return self.m.is_stopped()

    def closing(self) -> list[int] | None:
        """The current closing path (tokens), None if none within WALK_LIMIT."""
        if self._path is None or self._path[0] != self.n:
            self._path = (self.n, self.table.closing_path(self.m, WALK_LIMIT))
        return self._path[1]

    def closing_text(self) -> str:
        path = self.closing() or []
        return b"".join(self.table.pieces[t] or b"" for t in path).decode("utf-8", errors="replace")

    def allowed(self, remaining: int) -> np.ndarray:
        """bool [V]: tokens allowed next with `remaining` tokens left (this one included)."""
        t = self.table
        if self.m.is_stopped() or self.m.is_error():
            return t.eos.copy()
        mask = t.mask(self.m)
        count = int(np.count_nonzero(mask))
        if count == 1 or remaining > WALK_LIMIT + SLACK:
            return mask
        path = self.closing()
        if path is None:
            return mask
        spare = remaining - len(path) - SLACK
        if spare > (0 if count > SMALL_MASK else VERIFY_WINDOW):
            return mask
        cand = np.flatnonzero(mask if count <= SMALL_MASK else mask & t.single)
        ok = np.zeros_like(mask)
        for tok in cand:
            tok = int(tok)
            if t.eos[tok]:
                ok[tok] = True
                continue
            c = self.m.deep_copy()
            if c.try_consume_tokens([tok]) == 1:
                p = t.closing_path(c, remaining - 1)
                ok[tok] = p is not None and len(p) <= remaining - 1
        if path:
            ok[path[0]] = True
        return ok

    def advance(self, token: int) -> None:
        if self.m.is_stopped():
            return
        if not self.m.consume_token(int(token)):
            piece = self.table.pieces[token] if 0 <= token < len(self.table.pieces) else None
            raise ValueError(f"token {token} ({piece!r}) is not allowed by the grammar: {self.m.get_error()}")
        self.n += 1


def validate(grammar: str) -> str:
    """'' if llguidance accepts `grammar` (any tokenizer), else its error message."""
    return LLMatcher.validate_grammar(grammar)
