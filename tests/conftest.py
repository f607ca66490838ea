"""Shared fixtures: the workplace's test data, the SmolLM2 tokenizer from its GGUF, and a BPE trained here."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LONGCTX_TEST_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert (DATA / "squad").exists(), f"test data not found at {DATA}; set LONGCTX_TEST_SHARED"
    return DATA


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["LONGCTX_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def smol():
    from longctx.cli import default_tokenizer
    from longctx.tokenizer import load_tokenizer

    return load_tokenizer(default_tokenizer())


@pytest.fixture(scope="session")
def bpe(tmp_path_factory, data_dir):
    """A SentencePiece-style BPE (Metaspace pre-tokenizer, BOS added) trained on the essays: a
    tokenizer unlike SmolLM2's byte-level one, to show fitting does not depend on it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from longctx.tokenizer import load_tokenizer

    texts = [p.read_text() for p in sorted((data_dir / "pg_essays").glob("*.txt"))]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=3000, special_tokens=["<unk>", "<s>", "</s>"]))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    out = tmp_path_factory.mktemp("bpe")
    hf.save_pretrained(out)
    return load_tokenizer(out)


@pytest.fixture(scope="session")
def tokenizers_pair(smol, bpe):
    return {"smollm2": smol, "bpe": bpe}
