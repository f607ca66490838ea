"""Tokenizers: load any HF tokenizer (folder or .gguf file) and count tokens exactly as the model sees them.

Exact counting of every full prompt is too slow for sweeps (the 13 RULER tasks x 5 lengths x 500
samples is 200M tokens; docs/design.md). `PieceCounter` instead counts a prompt
as a sum of memoised *in-context* piece counts: the tokens a piece adds when appended to the
text on its left. That sum is exact whenever tokenization is local at piece junctions, which
holds for pre-tokenized BPE/Unigram tokenizers; the generator verifies it against a full
encode (see tasks/base.py) and falls back to full counting where it does not hold.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import warnings
from itertools import accumulate
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import UsageError
from .files import default_cache_dir

# Left context kept when a junction is not provably context-free (see PieceCounter.key).
TAIL_CHARS = 16
ANCHOR = "x"
# A digit run in a left tail is keyed as one 0: a digit run is its own pre-token, so which digits
# (and how many) precede a junction does not change how the piece after it tokenizes (document
# numbers, needle values).
_DIGITS_AS_ZERO = str.maketrans("123456789", "000000000")
_ZERO_RUNS = re.compile("0{2,}")


class Tokenizer:
    """A thin wrapper over a transformers tokenizer that fixes *how* prompts are encoded.

    A prompt is encoded with the tokenizer's special tokens (BOS...) unless its text already
    starts with the BOS token (a chat template that writes `<|begin_of_text|>`), so counts
    match what an inference backend feeds the model, without a double BOS.
    """

    def __init__(self, hf_tokenizer, name: str):
        self.hf = hf_tokenizer
        self.name = name
        self._backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        self.bos_text = hf_tokenizer.bos_token if isinstance(hf_tokenizer.bos_token, str) else None
        probe = "x"
        self._special_overhead = len(hf_tokenizer(probe, add_special_tokens=True)["input_ids"]) - len(
            hf_tokenizer(probe, add_special_tokens=False)["input_ids"]
        )
        self.fingerprint = _fingerprint(hf_tokenizer)

    @property
    def chat_template(self) -> str | None:
        return getattr(self.hf, "chat_template", None)

    def adds_special_tokens(self, text: str) -> bool:
        return not (self.bos_text and text.startswith(self.bos_text))

    def special_overhead(self, text: str) -> int:
        """Tokens the encoder adds around `text` (BOS/EOS of the post-processor)."""
        return self._special_overhead if self.adds_special_tokens(text) else 0

    def encode(self, text: str) -> list[int]:
        """Token ids exactly as a backend will feed them to the model."""
        return self.hf(text, add_special_tokens=self.adds_special_tokens(text))["input_ids"]

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def count_raw_many(self, texts: Sequence[str]) -> list[int]:
        """Token counts without special tokens, batched through the Rust backend when there is one."""
        if not texts:
            return []
        if self._backend is not None:
            encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
            return [len(e.ids) for e in encode(list(texts), add_special_tokens=False)]
        return [len(self.hf(t, add_special_tokens=False)["input_ids"]) for t in texts]

    def token_starts_many(self, texts: Sequence[str]) -> list[list[int]] | None:
        """Start character of every token of each text (no special tokens), or None without a
        Rust backend."""
        if self._backend is None:
            return None
        return [[s for s, _ in e.offsets] for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)


def _fingerprint(hf_tokenizer) -> str:
    """Hash of everything that changes token counts: vocab/merges/normalizer, specials, chat template."""
    h = hashlib.sha256()
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # slow tokenizer: the vocabulary is the best stand-in we have
        h.update(repr(sorted(hf_tokenizer.get_vocab().items())).encode())
    h.update(repr(hf_tokenizer.all_special_tokens).encode())
    h.update(repr(getattr(hf_tokenizer, "chat_template", None)).encode())
    h.update(repr(hf_tokenizer("x", add_special_tokens=True)["input_ids"]).encode())
    return h.hexdigest()[:16]


def _digit_runs_isolated(tok: Tokenizer) -> bool:
    """True when the pre-tokenizer always cuts digit runs from their neighbours, so which digits
    precede a junction cannot change how the text after it tokenizes (GPT-2/Llama-3 style regexes;
    not Metaspace, which cuts on spaces only)."""
    backend = tok._backend
    pre = getattr(backend, "pre_tokenizer", None) if backend is not None else None
    if pre is None:
        return False
    probe = "is: 1234567.\nOne 3:\nThe (42), x9y 7-8."
    for piece, _ in pre.pre_tokenize_str(probe):
        digits = sum(c.isdigit() for c in piece)
        if digits and digits != len(piece.strip(" \u0120\u2581")):
            return False
    return True


def load_tokenizer(path: str | os.PathLike, cache_dir: Path | None = None, trust_remote_code: bool = False) -> Tokenizer:
    """Load a tokenizer from a local HF folder, a `.gguf` file, or a hub id (`org/name`, which
    needs the hub or a populated HF cache).

    Converting a GGUF vocabulary takes seconds, so the converted tokenizer is saved under the
    cache, keyed by the file's sha256, and reloaded from there next time.
    """
    from transformers import AutoTokenizer

    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        cache = (cache_dir or default_cache_dir()) / "tokenizers" / _file_sha256(p)[:16]
        if not (cache / "tokenizer_config.json").exists():
            hf = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
            cache.mkdir(parents=True, exist_ok=True)
            hf.save_pretrained(str(cache))
        return Tokenizer(AutoTokenizer.from_pretrained(str(cache)), name=p.name)
    if p.is_dir():
        hf = AutoTokenizer.from_pretrained(str(p), trust_remote_code=trust_remote_code)
        _warn_if_not_its_own_file(hf, p)
        return Tokenizer(hf, name=p.name)
    if p.exists():
        raise UsageError(f"unsupported tokenizer path: {p} (expected a folder or a .gguf file)")
    if _looks_like_hub_id(str(path)):
        try:
            hf = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except OSError as e:
            raise UsageError(f"cannot load tokenizer {path} from the hub or its cache: {str(e).splitlines()[0]}") from None
        return Tokenizer(hf, name=str(path))
    raise UsageError(f"tokenizer not found: {p} (give a local tokenizer folder, a .gguf file or a hub id)")


class RetokenizedWarning(UserWarning):
    """transformers tokenizes a folder's text otherwise than the folder's own tokenizer.json."""


# Digits, runs of spaces, newlines, punctuation and accents: where tokenizers' splits differ.
_RETOKENIZE_PROBE = "The special magic number for naïve-café is: 1234567.\n  One 3:4 (x9y) 7-8 - end!"


def _warn_if_not_its_own_file(hf, folder: Path) -> None:
    """transformers 5 builds the tokenizer class of the folder's model type (from a config.json
    beside the tokenizer), whatever class the tokenizer files name, and that class may split text
    otherwise than the folder's own tokenizer.json: a `Qwen2Tokenizer` re-splits a vocabulary it
    was not made for and adds a pad token past it. longctx counts and feeds what transformers
    built, so its own runs stay consistent, but a server that reads tokenizer.json (llama.cpp,
    another stack) would see other tokens: say so."""
    file = folder / "tokenizer.json"
    if not file.is_file():
        return
    from tokenizers import Tokenizer as FileTokenizer

    own = FileTokenizer.from_file(str(file)).encode(_RETOKENIZE_PROBE, add_special_tokens=False).ids
    built = hf.encode(_RETOKENIZE_PROBE, add_special_tokens=False)
    if own != built:
        warnings.warn(f"{folder.name}: transformers loaded its tokenizer as {type(hf).__name__}, which splits text "
                      f"otherwise than the folder's tokenizer.json ({len(built)} tokens against {len(own)} on a probe); "
                      f"longctx counts and feeds {type(hf).__name__}'s tokens", RetokenizedWarning, stacklevel=3)


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _file_sha256(path: Path) -> str:
    """sha256 of a file, hashed once per process while its size and mtime stay the same (a GGUF
    is keyed by it for the tokenizer and again for the model: ~100 MB read each time)."""
    st = Path(path).stat()
    return _sha256_of(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class Run:
    """Pieces `seq[start:stop]` of a shared sequence, each following its predecessor in `seq`.

    A haystack is a few long runs of units (essay sentences, noise paragraphs, distractor lines)
    cut by a handful of needles. Counting it piece by piece costs O(units) per size probe; a Run
    costs one junction look-up (its first piece after whatever precedes it) plus a difference of
    prefix sums. `cum[i]` is the count of seq[1..i-1], each after its predecessor; it is the
    counter's own table of `seq` unless the producer of `seq` supplies it (tests hold such tables
    to a full encode).
    """

    __slots__ = ("seq", "start", "stop", "cum", "joined")

    def __init__(self, seq: Sequence[str], start: int, stop: int, cum: Sequence[int] | None = None,
                 joined: bool = False):
        if not 0 <= start <= stop <= len(seq):
            raise ValueError(f"run [{start}:{stop}] outside a sequence of {len(seq)}")
        if joined and start < 1:
            raise ValueError("a joined run needs the unit before its start")
        # joined: the text before this run ends exactly as seq[start - 1] (see `opened`), so its
        # first piece is counted from the table too.
        self.seq, self.start, self.stop, self.cum, self.joined = seq, start, stop, cum, joined

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return f"Run({self.start}:{self.stop} of {len(self.seq)})"

    def inner(self, counter: "PieceCounter") -> int:
        """Tokens of every piece but the first (which depends on what precedes the run), or of
        every piece for a joined run."""
        first = self.start if self.joined else self.start + 1
        if self.stop <= first:
            return 0
        cum = self.cum if self.cum is not None else counter.table(self.seq)
        return cum[self.stop] - cum[first]

    def slice(self, a: int, b: int) -> "Run":
        """Units a..b-1 of this run (indices relative to it)."""
        return Run(self.seq, self.start + a, self.start + b, self.cum, self.joined and a == 0)

    def opened(self, drop: int = 0) -> list:
        """This run with its first unit as word pieces (its first `drop` characters removed) and
        the rest joined to it. The junction with what precedes the run then costs a short key (the
        left neighbour and one word), not a whole unit: a distractor line or noise paragraph
        after each needle would otherwise be measured afresh in every sample."""
        rest = Run(self.seq, self.start + 1, self.stop, self.cum, joined=True) if len(self) > 1 else None
        return word_pieces(self.seq[self.start][drop:]) + ([rest] if rest else [])


_WORD_STARTS = re.compile(r"(?<=\S)(?= \S)")


def word_pieces(text: str) -> list[str]:
    """`text` cut before each ` word` that follows a non-space: context-free pieces the counter
    memoises by their own text, so text that recurs word by word (a query, a needle, a truncated
    sentence) is not re-measured whole."""
    return list(_split_words(text)) if text else []


@functools.lru_cache(maxsize=1 << 14)
def _split_words(text: str) -> tuple[str, ...]:
    return tuple(_WORD_STARTS.split(text))


_REPEATS: dict[str, tuple[str, ...]] = {}


def repeated(unit: str, n: int) -> tuple[str, ...]:
    """A shared tuple of at least n copies of `unit` (one object, so its count table is built once)."""
    seq = _REPEATS.get(unit, ())
    if len(seq) < n:
        seq = _REPEATS[unit] = (unit,) * max(2 * n, 1024)
    return seq


def flatten(pieces: Sequence) -> list[str]:
    """Strings and Runs to plain strings."""
    out: list[str] = []
    for p in pieces:
        if type(p) is Run:
            out.extend(p.seq[p.start:p.stop])
        else:
            out.append(p)
    return out


class PieceCounter:
    """Counts a prompt given as pieces, from memoised in-context piece counts.

    A piece that starts with one space followed by a non-space, placed after a non-space, is
    context-free for pre-tokenized tokenizers (the space always opens a new pre-token), so it is
    memoised by its text alone. Any other junction is memoised with the last TAIL_CHARS of its
    left neighbour (digits keyed as 0), and counted as tokens(tail + piece) - tokens(tail).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self._memo: dict = {}
        self._tables: dict[int, tuple[Sequence[str], list[int]]] = {}
        self._corpus_tables: dict[int, tuple[Sequence[str], list[int]]] = {}
        self._bases: dict[str, int] = {}
        self._anchor = tokenizer.count_raw_many([ANCHOR])[0]
        # How digits in a left tail are keyed: as 0 where digit runs are their own pre-tokens.
        self._tail_table = _DIGITS_AS_ZERO if _digit_runs_isolated(tokenizer) else {}

    def key(self, prev: str, piece: str):
        """The memo key of `piece` after `prev` (total, counts and count_each inline its first case)."""
        if not prev:
            return ("", piece)
        if len(piece) > 1 and piece[0] == " " and not piece[1].isspace() and not prev[-1].isspace():
            return piece
        tail = prev[-TAIL_CHARS:]
        if len(prev) > TAIL_CHARS and tail[0] != " ":  # extend to a word start: some pre-tokenizers split on spaces only
            sp = prev.rfind(" ", max(0, len(prev) - 4 * TAIL_CHARS), len(prev) - TAIL_CHARS)
            if sp >= 0:
                tail = prev[sp:]
        if self._tail_table:
            tail = tail.translate(self._tail_table)
            if "00" in tail:
                tail = _ZERO_RUNS.sub("0", tail)
        return (tail, piece)

    def _measure(self, keys: Iterable) -> None:
        missing = list(dict.fromkeys(k for k in keys if k not in self._memo))
        if not missing:
            return
        free = [k for k in missing if isinstance(k, str)]
        if len(free) >= 64:  # many new context-free pieces (random words, a pool): encode them together
            self._memo.update(zip(free, self._count_together(free)))
            missing = [k for k in missing if not isinstance(k, str)]
            if not missing:
                return
        texts, bases = [], []
        for k in missing:
            if isinstance(k, str):
                texts.append(ANCHOR + k)
                bases.append(ANCHOR)
            else:
                texts.append(k[0] + k[1])
                bases.append(k[0])
        base_counts = self._bases  # left tails recur (" 0.", a common word): each is counted once
        new = [b for b in dict.fromkeys(bases) if b not in base_counts]
        counted = self.tok.count_raw_many(texts + new)  # one call: most calls are a few short texts
        full = counted[:len(texts)]
        base_counts.update(zip(new, counted[len(texts):]))
        for k, n, b in zip(missing, full, bases):
            self._memo[k] = n - base_counts[b] if b else n

    def _count_together(self, pieces: list[str], chunk_chars: int = 1024) -> list[int]:
        """Counts of context-free pieces, encoded ~1 KB to a text (ANCHOR + p1 + p2 + ...) and split
        by token start offsets: encoding each short piece alone costs ~2x more in per-text
        overhead. A text whose split looks wrong (the anchor not alone, a piece without a token)
        is counted piece by piece instead."""
        groups, group, size = [], [], 0
        for p in pieces:
            if group and size + len(p) > chunk_chars:
                groups.append(group)
                group, size = [], 0
            group.append(p)
            size += len(p)
        groups.append(group)

        def alone(ps: list[str]) -> list[int]:
            return [n - self._anchor for n in self.tok.count_raw_many([ANCHOR + p for p in ps])]

        starts_per_text = self.tok.token_starts_many([ANCHOR + "".join(g) for g in groups])
        if starts_per_text is None:
            return alone(pieces)
        out: list[int] = []
        for g, token_starts in zip(groups, starts_per_text):
            bounds = np.cumsum([len(ANCHOR)] + [len(p) for p in g[:-1]])
            owner = np.searchsorted(bounds, np.asarray(token_starts, dtype=np.int64), side="right")
            counts = np.bincount(owner, minlength=len(g) + 1)  # owner 0 is the anchor
            if counts[0] == self._anchor and counts[1:].all():
                out += counts[1:].tolist()
            else:
                out += alone(g)
        return out

    def total(self, pieces: Sequence) -> int:
        """Token count of the joined pieces (strings and `Run`s) as encoded for the model, special
        tokens included. A Run costs one junction look-up plus a difference of its prefix sums."""
        key, memo = self.key, self._memo
        keys, inner, prev = [], 0, ""
        for p in pieces:
            if type(p) is Run:
                if not p.joined:
                    keys.append(key(prev, p.seq[p.start]))
                inner += p.inner(self)
                prev = p.seq[p.stop - 1]
            else:  # the context-free case of `key`, inline: most pieces are words after words
                keys.append(p if prev and len(p) > 1 and p[0] == " " and not p[1].isspace()
                            and not prev[-1].isspace() else key(prev, p))
                prev = p
        try:
            n = sum(memo[k] for k in keys)
        except KeyError:
            self._measure(keys)
            n = sum(memo[k] for k in keys)
        first = pieces[0] if pieces else ""
        return n + inner + self.tok.special_overhead(first.seq[first.start] if type(first) is Run else first)

    def counts(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """In-context counts of (left neighbour, piece) pairs."""
        key = self.key
        keys = [p if q and len(p) > 1 and p[0] == " " and not p[1].isspace() and not q[-1].isspace() else key(q, p)
                for q, p in pairs]
        self._measure(keys)
        return [self._memo[k] for k in keys]

    def table(self, seq: Sequence[str]) -> list[int]:
        """Prefix sums of each piece of `seq` counted after its predecessor in `seq` (see `Run`).
        Kept per sequence object: long ones (a corpus, a repeated haystack unit) for the counter's
        life, since every cell reuses them; short per-sample ones the last 16."""
        keep = self._corpus_tables if len(seq) >= 1024 else self._tables
        hit = keep.get(id(seq))
        if hit is not None and hit[0] is seq:
            return hit[1]
        counts = self.counts(list(zip(seq[:-1], seq[1:]))) if len(seq) > 1 else []
        cum = [0] + list(accumulate(counts, initial=0))
        if keep is self._tables and len(keep) >= 16:
            keep.pop(next(iter(keep)))
        keep[id(seq)] = (seq, cum)
        return cum

    def count_each(self, pieces: Sequence[str], prev: str = ".") -> list[int]:
        """In-context counts of pieces that will each follow text ending like `prev`. (`counts` with
        one left neighbour; kept apart because checking that neighbour once, not per piece, is
        faster over a whole sweep.)"""
        if prev and not prev[-1].isspace():  # most pieces are context-free here: skip `key`
            key = self.key
            keys = [p if len(p) > 1 and p[0] == " " and not p[1].isspace() else key(prev, p) for p in pieces]
        else:
            keys = [self.key(prev, p) for p in pieces]
        self._measure(keys)
        return [self._memo[k] for k in keys]

    def forget(self, keep: int = 500_000) -> None:
        """Bound memory: drop the memo when it grows past `keep` entries (counts are recomputed;
        the few sequence tables are kept)."""
        if len(self._memo) > keep:
            self._memo.clear()
            self._bases.clear()
