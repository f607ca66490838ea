"""The generator's fast paths, each held to a simple reference: Runs against piece-by-piece
counting and a full encode, the needle pool's line table, essay windows, the CWE closed form,
the vectorised Zipf counts, the bulk random draws and the cached sentence split."""

import json
import random
from collections import Counter

import pytest

from longctx import corpora
from longctx.corpora import DataPaths, load_essays
from longctx.tasks import RULER_TASKS, cwe, fwe, niah
from longctx.tasks.base import (GenContext, GenOptions, distinct_indices, permutation, random_indices,
                                sample_rng)
from longctx.tokenizer import PieceCounter, Run, flatten, repeated, word_pieces


def _random_pieces(rng: random.Random, n: int) -> list[str]:
    words = ["grass", "green.", "VAR", "ABCDE", "=", "12345", "the", "sky", "is:", "7463343."]
    out = []
    for _ in range(n):
        sep = rng.choice([" ", " ", "\n", "\n\n", ""])
        out.append(sep + " ".join(rng.choice(words) for _ in range(rng.randint(1, 6))))
    return out


@pytest.mark.parametrize("tok_name", ["smollm2", "bpe"])
def test_runs_count_like_their_pieces_and_like_a_full_encode(tokenizers_pair, tok_name):
    tok = tokenizers_pair[tok_name]
    counter, rng = PieceCounter(tok), random.Random(7)
    seq = tuple(_random_pieces(rng, 60))
    for _ in range(40):
        a = rng.randrange(1, len(seq) - 2)
        b = rng.randrange(a + 1, len(seq))
        plain = Run(seq, a, b)
        joined = Run(seq, a, b, joined=True)  # after text ending exactly like seq[a - 1]
        head = ["Some text: "]
        reference = counter.total(head + list(seq[a:b]))
        assert counter.total(head + [plain]) == reference
        assert counter.total(head + [seq[a - 1], joined]) == counter.total(head + list(seq[a - 1:b]))
        # Runs mixed with word pieces (an opened run) flatten to the same text and count alike.
        opened = Run(seq, a, b).opened()
        assert "".join(flatten(opened)) == "".join(seq[a:b])
        assert counter.total(head + opened) == counter.total(head + flatten(opened))
    # Against the tokenizer itself, on the text a run stands for.
    noise = repeated("\n" + niah.NOISE, 50)
    pieces = ["Intro text.", Run(noise, 0, 50), "\nWhat is the number?"]
    assert counter.total(pieces) == tok.count("".join(flatten(pieces)))


def test_runs_reject_bad_bounds():
    with pytest.raises(ValueError):
        Run(("a", "b"), 1, 3)
    with pytest.raises(ValueError):
        Run(("a", "b"), 0, 1, joined=True)  # nothing before its start to be joined to


def test_word_pieces_rejoin_to_their_text():
    for text in ["", "one", " The special magic uuid for a-b mentioned is", "a  b\n c", "x\n\nVAR A = 1 "]:
        assert "".join(word_pieces(text)) == text


@pytest.mark.parametrize("task", ["niah_multikey_2", "niah_multikey_3"])
def test_needle_pool_line_table_matches_the_counter_and_the_tokenizer(smol, data_dir, task):
    ctx = GenContext(smol, GenOptions(), DataPaths(data_dir))
    p = niah.check_params(dict(RULER_TASKS[task].params))
    lines = niah._NeedleLines(p, niah._distractor_parts(ctx, p, 4096), random.Random(3), set())
    (run,) = lines.hay(120, ctx)
    generic = PieceCounter(smol).table(run.seq)  # every line counted after its predecessor, whole
    assert list(run.cum) == generic
    texts = list(run.seq)
    for i in range(1, 120, 17):  # and each line's count is what the tokenizer adds for it
        assert run.cum[i + 1] - run.cum[i] == smol.count("".join(texts[:i + 1])) - smol.count("".join(texts[:i]))
    assert len({t.split(" is: ")[0] for t in texts}) == 120  # distinct keys within a haystack


def test_needle_pool_never_uses_a_real_needle_key(smol, data_dir):
    ctx = GenContext(smol, GenOptions(), DataPaths(data_dir))
    p = niah.check_params(dict(RULER_TASKS["niah_multikey_2"].params))
    parts = niah._distractor_parts(ctx, p, 1024)
    real = set(parts.keys[:50])
    lines = niah._NeedleLines(p, parts, random.Random(5), real)
    lines.hay(2000, ctx)
    used = {parts.keys[parts.key_index[t.split(" for ")[1].split(" is: ")[0]]] for *_, t in lines.items}
    assert not used & real


def test_short_number_pools_repeat_instead_of_stalling(smol, data_dir):
    ctx = GenContext(smol, GenOptions(), DataPaths(data_dir))
    p = niah.check_params({"haystack": "needle", "key_type": "numbers", "value_type": "numbers", "digits": 1})
    parts = niah._distractor_parts(ctx, p, 1024)
    assert sorted(parts.values) == [str(d) for d in range(1, 10)]
    lines = niah._NeedleLines(p, parts, random.Random(1), set())
    assert len(lines.hay(100, ctx)[0]) == 100


def _essay_reference(essays, start: int, n_words: int) -> list[str]:
    """The plain loop: whole sentences from `start` (wrapping), the last one word-truncated."""
    out, left, i, total = [], n_words, start, len(essays.sentences)
    while left > 0:
        s, wc = essays.sentences[i % total], essays.word_counts[i % total]
        out.append(s if wc <= left else " ".join(s.split(" ")[:left]))
        left -= wc
        i += 1
    return out


def test_essay_windows_match_the_plain_loop_including_wrap_around(data_dir):
    essays = load_essays(DataPaths(data_dir).essays_path())
    units, rng = niah._essay_units(essays), random.Random(11)
    total_words = sum(essays.word_counts)
    cases = [(len(essays.sentences) - 3, 500), (0, 0), (5, 1), (0, total_words + 40)]
    cases += [(rng.randrange(len(essays.sentences)), rng.randrange(1, 30000)) for _ in range(30)]
    for start, n in cases:
        window = units.window(start, n)
        got = [u[1:] for u in flatten(window)]  # units are " " + sentence
        assert got == _essay_reference(essays, start, n), (start, n)


def test_cwe_closed_form_matches_counting_every_piece(smol, data_dir):
    ctx = GenContext(smol, GenOptions(verify="none"), DataPaths(data_dir))
    spec = RULER_TASKS["cwe"]
    for length in (1024, 4096):
        for i in range(3):
            d = cwe.generate(spec, length, 120, i, sample_rng(spec, length, 42, i), ctx, {})
            assert d.tokens == ctx.counter.total(flatten(d.pieces) + word_pieces(d.answer_prefix))
            assert d.tokens == smol.count(d.text() + d.answer_prefix)


def test_vectorised_zipf_counts_equal_the_scalar_formula():
    from scipy.special import zeta

    for alpha in (2.0, 1.5, 3.3):
        zipf = fwe._Zipf(400, alpha)
        for n in (0, 1, 17, 5000, 123457):
            scalar = [int(n * r ** -alpha / zeta(alpha)) for r in range(1, 401)]
            assert zipf.counts(n).tolist() == scalar


def test_bulk_draws_are_deterministic_distinct_and_uniform():
    assert permutation(1000, random.Random(1)) == permutation(1000, random.Random(1))
    assert sorted(permutation(1000, random.Random(2))) == list(range(1000))
    for size, k in [(100, 10), (100, 90), (14000, 2700), (5, 5)]:
        got = distinct_indices(random.Random(size + k), size, k)
        assert len(got) == k == len(set(got)) and all(0 <= i < size for i in got)
    with pytest.raises(ValueError):
        distinct_indices(random.Random(0), 3, 4)
    # Uniform: every one of 10 values drawn 10,000 times in 100,000 (chi-square, df 9, p ~ 1e-6).
    counts = Counter(random_indices(random.Random(3), 10, 100_000))
    assert sum((c - 10_000) ** 2 / 10_000 for c in counts.values()) < 45
    firsts = Counter(permutation(4, random.Random(s))[0] for s in range(4000))
    assert all(800 < c < 1200 for c in firsts.values())  # each item leads about a quarter of the time


def test_essay_split_is_cached_and_a_damaged_cache_is_rebuilt(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGCTX_CACHE", str(tmp_path))
    path = DataPaths(data_dir).essays_path()
    load_essays.cache_clear()
    first = load_essays(path)
    (cached,) = (tmp_path / "corpora").glob("essays-*.json")
    assert tuple(json.loads(cached.read_text())["sentences"]) == first.sentences

    def no_split():
        raise AssertionError("the cached split should have been read")

    load_essays.cache_clear()
    monkeypatch.setattr(corpora, "sentence_splitter", no_split)
    assert load_essays(path) == first
    monkeypatch.undo()
    monkeypatch.setenv("LONGCTX_CACHE", str(tmp_path))
    cached.write_text("{not json")
    load_essays.cache_clear()
    assert load_essays(path) == first
    assert tuple(json.loads(cached.read_text())["sentences"]) == first.sentences
    load_essays.cache_clear()


@pytest.mark.parametrize("tok_name", ["smollm2", "bpe"])
def test_pieces_counted_together_equal_pieces_counted_alone(tokenizers_pair, tok_name):
    tok = tokenizers_pair[tok_name]
    rng = random.Random(9)
    words = [" " + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(1, 12))) for _ in range(700)]
    words += [" 1234567.", " 8c3f0e2a-1b2c-4d5e-8f90-123456789abc", " fond-bread", " x"]
    together = PieceCounter(tok)._count_together(words, chunk_chars=200)
    alone = [n - tok.count_raw_many(["x"])[0] for n in tok.count_raw_many(["x" + w for w in words])]
    assert together == alone
    # A piece that would merge with its neighbour is caught and counted alone.
    glued = [" hel", "lo", " wor", "ld"] * 30  # " hello", " world": one token each
    got = PieceCounter(tok)._count_together(glued, chunk_chars=64)
    assert got == [n - tok.count_raw_many(["x"])[0] for n in tok.count_raw_many(["x" + w for w in glued])]


def test_words_haystack_table_matches_the_counter_and_long_tables_are_kept(smol, data_dir):
    ctx = GenContext(smol, GenOptions(), DataPaths(data_dir))
    (run,) = niah._WordUnits(random.Random(2)).hay(1500, ctx)
    assert list(run.cum) == PieceCounter(smol).table(run.seq)
    # A corpus-sized table outlives many short per-sample ones (every cell reuses it).
    counter = PieceCounter(smol)
    corpus = repeated("\n" + niah.NOISE, 2000)
    first = counter.table(corpus)
    for i in range(40):
        counter.table(tuple(f" w{i}" for _ in range(3)))
    assert counter.table(corpus) is first
