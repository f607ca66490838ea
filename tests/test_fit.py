"""Exact length fitting: every RULER task at 1K, 4K and 16K, with two unlike tokenizers."""

import re

import pytest

from longctx.corpora import DataPaths, sentence_splitter
from longctx.errors import FitError, UsageError
from longctx.tasks import RULER_TASKS, generate_samples, parse_task
from longctx.tasks.base import GenContext, GenOptions

LENGTHS = (1024, 4096, 16384)


@pytest.mark.parametrize("tok_name", ["smollm2", "bpe"])
@pytest.mark.parametrize("length", LENGTHS)
def test_every_task_fills_97_to_100_percent(tokenizers_pair, data_dir, tok_name, length):
    tok = tokenizers_pair[tok_name]
    ctx = GenContext(tok, GenOptions(verify="none"), DataPaths(data_dir))
    for name, spec in RULER_TASKS.items():
        for s in generate_samples(spec, length, range(2), ctx):
            # Recount independently, exactly as the model will be fed: template + prefix + BOS.
            real = len(tok.encode(s.prompt + s.answer_prefix))
            assert real == s.meta["token_count"], (name, length, s.index)
            total = real + s.tokens_to_generate
            assert 0.97 * length <= total <= length, (name, length, total)
            if spec.family == "qa":  # any reference counts; HotpotQA comparisons answer yes/no
                assert any(t in s.prompt for t in s.targets) or set(s.targets) <= {"yes", "no"}, name
            else:
                for target in s.targets:
                    assert target in s.prompt, (name, target)


def test_a_reserve_keeps_room_for_tokens_around_every_prompt(smol, data_dir):
    """GenOptions.reserve (a server's chat template around each prompt): every task fits its
    prompt to the length less the reserve, still filling 97-100 % of it with the reserve counted;
    the samples get ids of their own, while ids without a reserve are those of before."""
    plain = GenContext(smol, GenOptions(verify="none"), DataPaths(data_dir))
    reserved = GenContext(smol, GenOptions(verify="none", reserve=30), DataPaths(data_dir))
    for name, spec in RULER_TASKS.items():
        for a, b in zip(generate_samples(spec, 2048, range(2), plain), generate_samples(spec, 2048, range(2), reserved)):
            seen = len(smol.encode(b.prompt + b.answer_prefix)) + 30 + b.tokens_to_generate
            assert 0.97 * 2048 <= seen <= 2048 and b.meta["length"] == seen and b.meta["reserve"] == 30, (name, seen)
            assert a.id != b.id and "reserve" not in a.meta and b.meta["token_count"] <= a.meta["token_count"]
    assert plain.options == GenOptions(verify="none", reserve=0)
    with pytest.raises(UsageError, match="reserve must be"):
        GenOptions(reserve=-1)
    with pytest.raises(UsageError, match="and 1000 more around the prompt"):
        generate_samples(RULER_TASKS["vt"], 1024, range(1), GenContext(smol, GenOptions(reserve=1000)))


def test_additive_count_agrees_with_full_encode_on_every_sample(smol, data_dir):
    ctx = GenContext(smol, GenOptions(verify="all"), DataPaths(data_dir))
    for name in ("niah_multikey_3", "cwe", "qa_1", "vt"):
        samples = generate_samples(RULER_TASKS[name], 2048, range(4), ctx)
        assert all(s.meta["count_method"] == "additive" and s.meta["verified"] for s in samples)


def test_qa_below_gold_size_stops_with_a_reason(smol, data_dir):
    ctx = GenContext(smol, GenOptions(), DataPaths(data_dir))
    spec = parse_task("qa_2:all_paragraphs=true")
    with pytest.raises(FitError, match="required documents"):
        generate_samples(spec, 600, range(1), ctx)


def test_length_below_generation_budget_is_a_usage_error(smol, data_dir):
    ctx = GenContext(smol, GenOptions(), DataPaths(data_dir))
    with pytest.raises(UsageError, match="no room"):
        generate_samples(RULER_TASKS["niah_single_1"], 100, range(1), ctx)


@pytest.mark.parametrize("tok_name", ["smollm2", "bpe"])
def test_words_haystack_digits_and_short_noise_fill_exactly(tokenizers_pair, data_dir, tok_name):
    """Our additions: the random-word haystack, `digits`, and noise prompts below ~800 tokens,
    where one whole noise repeat is larger than the 3 % slack (RULER leaves them short)."""
    tok = tokenizers_pair[tok_name]
    ctx = GenContext(tok, GenOptions(verify="all"), DataPaths(data_dir))
    for task, lengths in [("niah_single_1:haystack=words,digits=3,tokens_to_generate=8", (200, 1024)),
                          ("niah_single_1:tokens_to_generate=8", (200, 250, 333, 700)),
                          ("niah_single_1:key_type=numbers,digits=2,haystack=words,depth=50", (1024,))]:
        for length in lengths:
            for s in generate_samples(parse_task(task), length, range(8), ctx):
                real = len(tok.encode(s.prompt + s.answer_prefix))
                assert real == s.meta["token_count"]
                assert 0.97 * length <= real + s.tokens_to_generate <= length, (task, length)
                assert s.targets[0] in s.prompt
                if "digits=" in task:
                    assert re.fullmatch(r"\d{%s}" % task.split("digits=")[1][0], s.targets[0])
                if "haystack=words" in task:
                    assert "The grass is green" not in s.prompt


def test_default_niah_values_are_rulers_seven_digits(smol, data_dir):
    ctx = GenContext(smol, GenOptions(), DataPaths(data_dir))
    (s,) = generate_samples(RULER_TASKS["niah_single_1"], 1024, range(1), ctx)
    assert re.fullmatch(r"\d{7}", s.targets[0])
    with pytest.raises(UsageError, match="digits"):
        parse_task("niah_single_1:digits=0")


@pytest.mark.parametrize("haystack", ["noise", "needle", "essay", "words"])
@pytest.mark.parametrize("depth", [0, 20, 50, 80, 100])
def test_fixed_depth_lands_within_one_unit(smol, data_dir, haystack, depth):
    ctx = GenContext(smol, GenOptions(), DataPaths(data_dir))
    spec = parse_task(f"niah:haystack={haystack},depth={depth}")
    (s,) = generate_samples(spec, 4096, range(1), ctx)
    needle = next(n for n in re.findall(r"One of the special magic numbers for [^ ]+ is: \d+\.", s.prompt)
                  if s.targets[0] in n)
    context = s.prompt.split("afterwards.\n", 1)[1].rsplit("\nWhat is the special", 1)[0]
    if haystack == "essay":
        before, after = context.split(needle)
        split = sentence_splitter().tokenize
        units_before = len(split(before)) if before.strip() else 0
        units = units_before + len(split(after))
    elif haystack == "words":
        before, after = context.split(needle)
        units_before = len(before.split())
        units = units_before + len(after.split())
    else:
        lines = context.split("\n")
        units_before = lines.index(needle)
        units = len(lines) - 1
    assert abs(units_before - depth / 100 * units) <= 1


def test_depth_sweep_is_paired(smol, data_dir):
    """Depth is left out of the sample RNG: the same needle and haystack at every depth."""
    ctx = GenContext(smol, GenOptions(), DataPaths(data_dir))
    a, b = (generate_samples(parse_task(f"niah_single_2:depth={d}"), 2048, range(1), ctx)[0] for d in (0, 100))
    assert a.targets == b.targets and a.prompt != b.prompt
    assert sorted(a.prompt.split()) == sorted(b.prompt.split())
