"""vLLM and llama-cpp-python are optional: their request/response mapping is tested here with
stand-ins that record what they are asked, and llama.cpp also for real when it is installed
(and, with its server's packages, the openai backend against llama.cpp's OpenAI-compatible server)."""

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
    assert sampling.kwargs | {"stop": None} == {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0,
                                                "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": 8,
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


# A 7-digit needle in a short noise haystack, which SmolLM2 retrieves.
NEEDLE_PROMPT = ("A special magic number is hidden within the following text. " + "The grass is green. " * 40
                 + "One of the special magic numbers for lucky-cat is: 4821937. " + "The sky is blue. " * 40
                 + "What is the special magic number for lucky-cat mentioned in the provided text? "
                 + "The special magic number for lucky-cat mentioned in the provided text is")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python not installed (optional extra: pip install 'longctx[gguf]')")
def test_llama_cpp_runs_smollm2_and_counts_like_the_fitting_tokenizer(smol):
    m = load_model("gguf", path=str(default_tokenizer()), n_ctx=2048)
    (got,) = m.generate([NEEDLE_PROMPT], GenParams(12))
    assert got.prompt_tokens == smol.count(NEEDLE_PROMPT)
    assert "4821937" in got.text


LLAMA_SERVER_MODULES = ("llama_cpp", "fastapi", "uvicorn", "sse_starlette", "pydantic_settings", "starlette_context")


@pytest.fixture
def llama_server(tmp_path):
    """llama-cpp-python's OpenAI-compatible server on SmolLM2's GGUF, on a free local port."""
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "w")  # a pipe left unread would fill up and stall the server
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(default_tokenizer()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if httpx.get(url + "/models").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "llama.cpp's server did not come up in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in LLAMA_SERVER_MODULES),
                    reason="needs llama-cpp-python and its server's packages (pip install 'llama-cpp-python[server]')")
def test_openai_backend_on_llama_cpp_server_equals_the_gguf_backend_once_its_penalty_is_off(llama_server, smol):
    """A real OpenAI-compatible server: llama-cpp-python's, on the same GGUF as the gguf backend.
    With its repeat penalty pinned off (extra_body), the completions endpoint gives the gguf
    backend's greedy answers and prompt token counts; with temperature 0 alone, the server's
    default penalty (1.1) changes an answer."""
    prompts = [NEEDLE_PROMPT, NEEDLE_PROMPT[:300], "The grass is green. The sky is blue. " * 12 + "Repeat the first sentence:"]
    params = GenParams(12)
    local = load_model("gguf", path=str(default_tokenizer()), n_ctx=2048).generate(prompts, params)
    options = dict(base_url=llama_server, model="smollm2", tokenizer=str(default_tokenizer()), max_context=2048)
    pinned = load_model("openai", extra_body={"repeat_penalty": 1.0, "top_k": 1}, **options).generate(prompts, params)
    plain = load_model("openai", **options).generate(prompts, params)
    assert all(c.ok for c in local + pinned + plain)
    assert [c.text for c in pinned] == [c.text for c in local]
    assert [c.prompt_tokens for c in pinned] == [c.prompt_tokens for c in local] == [smol.count(p) for p in prompts]
    assert "4821937" in pinned[0].text
    assert [c.text for c in plain] != [c.text for c in local]


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in LLAMA_SERVER_MODULES),
                    reason="needs llama-cpp-python and its server's packages (pip install 'llama-cpp-python[server]')")
def test_on_llama_cpp_server_the_chat_endpoint_sees_what_the_local_chat_template_counts(llama_server, smol):
    """The server renders a chat prompt in the GGUF's own template: its count is the local count of
    the prompt in the tokenizer's chat template, so the budget check is exact and nothing warns."""
    import warnings

    prompts = [NEEDLE_PROMPT, "The grass is green. " * 20 + "What colour is the grass?"]
    options = dict(base_url=llama_server, model="smollm2", endpoint="chat", extra_body={"repeat_penalty": 1.0})
    m = load_model("openai", tokenizer=str(default_tokenizer()), max_context=2048, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = m.generate(prompts, GenParams(12))
    by_server = load_model("openai", **options).generate(prompts, GenParams(12))  # no local count to fall back on
    assert all(c.ok for c in got + by_server)
    assert [c.prompt_tokens for c in by_server] == [c.prompt_tokens for c in got] == [m.seen_tokens(p) for p in prompts]
    assert all(m.seen_tokens(p) == smol.count(p) + 30 for p in prompts)  # SmolLM2's template and system prompt


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
