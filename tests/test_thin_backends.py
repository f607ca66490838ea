"""vLLM and llama-cpp-python are optional: their request/response mapping is tested here with
stand-ins that record what they are asked, and llama.cpp also for real when it is installed."""

import importlib.util
import sys
import types

import pytest

from longctx.cli import default_tokenizer
from longctx.errors import UsageError
from longctx.models import GenParams, load_model, missing_modules


class FakeVLLM:
    """Records LLM(...) arguments and answers generate() with vLLM's RequestOutput shape."""

    def __init__(self):
        self.calls = []
        fake = self

        class LLM:
            def __init__(self, **kwargs):
                fake.calls.append(("init", kwargs))
                self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=64))

            def generate(self, prompts, sampling, use_tqdm=True):
                fake.calls.append(("generate", prompts, sampling))
                return [types.SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[
                    types.SimpleNamespace(text=f"out{len(p['prompt_token_ids'])}", token_ids=[1, 2])]) for p in prompts]

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        self.module = types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)


def test_vllm_gets_token_ids_and_greedy_params(monkeypatch, smol):
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setattr("longctx.models.missing_modules", lambda name: [])
    m = load_model("vllm", path=str(default_tokenizer()), dtype="bf16", max_model_len=64)
    assert fake.calls[0][1]["dtype"] == "bfloat16" and fake.calls[0][1]["enable_prefix_caching"]
    prompts = ["short prompt", "word " * 80]
    got = m.generate(prompts, GenParams(8, stop=("\n",)))
    _, sent, sampling = fake.calls[1]
    assert sent == [{"prompt_token_ids": smol.encode(prompts[0])}]  # the over-budget one is not sent
    assert sampling.kwargs | {"stop": None} == {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "max_tokens": 8,
                                                "stop": None, "skip_special_tokens": True, "seed": 0}
    assert sampling.kwargs["stop"] == ["\n"]
    assert got[0].ok and got[0].text == f"out{smol.count(prompts[0])}" and got[0].output_tokens == 2
    assert not got[1].ok and "over budget" in got[1].error


def test_missing_backend_gives_an_install_hint(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(UsageError, match=r"pip install 'longctx\[gguf\]'"):
        load_model("gguf", path="x.gguf")
    with pytest.raises(UsageError, match="needs vllm"):
        load_model("vllm", path="x")


def test_llama_cpp_mapping(monkeypatch, smol):
    calls = []

    class Llama:
        def __init__(self, **kwargs):
            calls.append(kwargs)

        def n_ctx(self):
            return 128

        def tokenize(self, data, add_bos, special):
            calls.append(("tokenize", add_bos, special))
            return smol.encode(data.decode())

        def create_completion(self, ids, **kwargs):
            calls.append(("complete", ids, kwargs))
            return {"choices": [{"text": " 42"}], "usage": {"completion_tokens": 2}}

    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=Llama))
    monkeypatch.setattr("longctx.models.missing_modules", lambda name: [])
    m = load_model("gguf", path=str(default_tokenizer()), n_gpu_layers=-1)
    assert calls[0]["n_gpu_layers"] == -1 and m.max_context == 128
    got = m.generate(["The answer is", "x " * 200], GenParams(4))
    assert got[0].text == " 42" and got[0].prompt_tokens == smol.count("The answer is")
    assert calls[1] == ("tokenize", True, True)
    kwargs = calls[2][2]
    assert kwargs["temperature"] == 0.0 and kwargs["top_k"] == 1 and kwargs["repeat_penalty"] == 1.0
    assert "over budget" in got[1].error
    with pytest.raises(UsageError, match=".gguf file"):
        load_model("gguf", path="/tmp")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python not installed (optional extra: pip install 'longctx[gguf]')")
def test_llama_cpp_runs_smollm2_and_counts_like_the_fitting_tokenizer(smol):
    m = load_model("gguf", path=str(default_tokenizer()), n_ctx=2048)
    prompt = ("A special magic number is hidden within the following text. " + "The grass is green. " * 40
              + "One of the special magic numbers for lucky-cat is: 4821937. " + "The sky is blue. " * 40
              + "What is the special magic number for lucky-cat mentioned in the provided text? "
              + "The special magic number for lucky-cat mentioned in the provided text is")
    (got,) = m.generate([prompt], GenParams(12))
    assert got.prompt_tokens == smol.count(prompt)
    assert "4821937" in got.text


def test_models_command_lists_backends_and_the_study_checkpoints(capsys):
    from longctx.cli import main
    from longctx.models.catalog import study_checkpoints

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("hf", "mamba_ssm", "gguf", "openai", "vllm"):
        assert f"  {name} " in out
    for c in study_checkpoints():
        assert c.name in out and str(c.train_context) in out
    assert len(study_checkpoints()) == 8
    assert ("missing vllm" in out) == bool(missing_modules("vllm"))
