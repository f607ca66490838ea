"""The openai backend against a fake OpenAI-compatible server on 127.0.0.1 that injects the
failures real servers produce: 500s, 429s with Retry-After, timeouts, malformed JSON and dropped
connections."""

import json
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from longctx.errors import UsageError
from longctx.models import GenParams, load_model

SECRET = "sk-test-very-secret-123"


class FakeServer:
    """Serves /v1/completions and /v1/chat/completions. `script` maps a prompt to the list of
    faults to inject on its successive requests (then it answers normally)."""

    def __init__(self):
        self.script: dict[str, list[str]] = {}
        self.count = lambda text: len(text.split())  # the prompt tokens it reports (a chat prompt: its message)
        self.requests: list[dict] = []
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                prompt = body["messages"][0]["content"] if "messages" in body else body["prompt"]
                with server.lock:
                    server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("authorization")})
                    faults = server.script.get(prompt, [])
                    fault = faults.pop(0) if faults else "ok"
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                try:
                    server.respond(self, fault, prompt, "messages" in body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def respond(self, h, fault, prompt, chat):
        if fault == "drop":
            h.close_connection = True
            h.connection.shutdown(2)  # hang up without a response
            return
        if fault == "slow":
            time.sleep(1.5)
        if fault.startswith("status"):
            code, _, retry_after = fault[len("status"):].partition("/")
            h.send_response(int(code))
            if retry_after:
                h.send_header("Retry-After", retry_after)
            payload = b'{"error": {"message": "injected"}}'
        elif fault == "malformed":
            h.send_response(200)
            payload = b'{"choices": [{"tex'
        else:
            time.sleep(0.05)  # long enough for concurrent requests to overlap
            h.send_response(200)
            text = f"answer to {prompt[-8:]}"
            choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            payload = json.dumps({"choices": [choice], "usage": {"prompt_tokens": self.count(prompt),
                                                                 "completion_tokens": 3}}).encode()
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def model(server, **kw):
    options = dict(base_url=server.url, model="fake", backoff=0.01, max_retries=3, timeout=5.0)
    return load_model("openai", **(options | kw))


def test_completions_and_chat_map_requests_and_responses(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    for endpoint, path in (("completions", "/v1/completions"), ("chat", "/v1/chat/completions")):
        got = model(server, endpoint=endpoint).generate(["one two three prompt-A"], GenParams(16, stop=("zz",)))
        assert got[0].ok and got[0].text == "answer to prompt-A" and got[0].prompt_tokens == 4
        req = server.requests[-1]
        assert req["path"] == path and req["auth"] == f"Bearer {SECRET}"
        assert req["body"]["max_tokens"] == 16 and req["body"]["temperature"] == 0 and req["body"]["stop"] == ["zz"]


def test_transient_faults_are_retried_until_success(server):
    faults = {"p-500": ["status500", "status503"], "p-drop": ["drop"], "p-bad": ["malformed"],
              "p-slow": ["slow"], "p-ok": []}
    server.script = {k: list(v) for k, v in faults.items()}
    got = model(server, timeout=0.5).generate(list(faults), GenParams(8))
    assert [c.text for c in got] == [f"answer to {p[-8:]}" for p in faults]
    attempts = {p: sum(r["body"]["prompt"] == p for r in server.requests) for p in faults}
    assert attempts == {"p-500": 3, "p-drop": 2, "p-bad": 2, "p-slow": 2, "p-ok": 1}


def test_retry_after_is_honoured(server):
    server.script = {"p": ["status429/1"]}
    start = time.perf_counter()
    got = model(server).generate(["p"], GenParams(8))
    assert got[0].ok and time.perf_counter() - start >= 1.0


def test_permanent_and_exhausted_failures_become_rows_with_reasons(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server.script = {"bad-request": ["status400"], "always-500": ["status500"] * 10, "fine": []}
    got = model(server, max_retries=2).generate(["bad-request", "always-500", "fine"], GenParams(8))
    assert got[0].error.startswith("HTTP 400") and "after 1 attempt)" in got[0].error
    assert got[1].error.startswith("HTTP 500") and "after 3 attempts" in got[1].error
    assert got[2].ok
    assert sum(r["body"]["prompt"] == "bad-request" for r in server.requests) == 1
    assert all(SECRET not in (c.error or "") for c in got)


def test_concurrency_is_limited(server):
    m = model(server, concurrency=3)
    m.generate([f"p{i}" for i in range(12)], GenParams(4))
    assert server.peak <= 3 and server.peak >= 2
    m.close()  # (the runner closes each adapter when its cells are done)
    assert m._client.is_closed


def test_budget_check_with_a_local_tokenizer(server, smol):
    from longctx.cli import default_tokenizer

    m = model(server, tokenizer=str(default_tokenizer()), max_context=20)
    got = m.generate(["word " * 40, "short one"], GenParams(8))
    assert "over budget" in got[0].error and got[1].ok
    assert len(server.requests) == 1  # the over-budget prompt never left the machine


def test_a_server_count_other_than_the_local_one_warns_once(server, smol):
    """The rows record the server's count; the first prompt the two count differently warns, naming both."""
    from longctx.cli import default_tokenizer
    from longctx.models.openai_api import PromptTokensWarning

    prompt = "Repeat: the grass is green."
    m = model(server, tokenizer=str(default_tokenizer()))  # the fake server counts words
    with pytest.warns(PromptTokensWarning, match=f"server counted 5 prompt tokens where the local tokenizer counted "
                                                 f"{smol.count(prompt)} .*second BOS"):
        got = m.generate([prompt, prompt], GenParams(4))
    assert [c.prompt_tokens for c in got] == [5, 5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.generate([prompt], GenParams(4))  # once per adapter
        server.count = smol.count
        model(server, tokenizer=str(default_tokenizer())).generate([prompt], GenParams(4))  # equal counts: silent
        model(server).generate([prompt], GenParams(4))  # no local count: nothing to compare


def test_the_chat_endpoint_counts_the_local_chat_template(server, smol, bpe):
    """On the chat endpoint the budget counts what the model sees: the prompt in the chat template."""
    from longctx.cli import default_tokenizer
    from longctx.models.openai_api import PromptTokensWarning

    prompt = "word " * 30
    rendered = smol.hf.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
    overhead = smol.count(rendered) - smol.count(prompt)
    assert overhead > 5 and prompt in rendered
    m = model(server, endpoint="chat", tokenizer=str(default_tokenizer()), max_context=smol.count(prompt) + 8)
    assert m.seen_tokens(prompt) == smol.count(rendered)
    assert model(server, tokenizer=str(default_tokenizer())).seen_tokens(prompt) == smol.count(prompt)
    got = m.generate([prompt], GenParams(8))  # fits without the template, not with it
    assert "over budget" in got[0].error and str(smol.count(rendered)) in got[0].error and not server.requests
    server.count = lambda message: smol.count(rendered) if message == prompt else 0  # a server with this template
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model(server, endpoint="chat", tokenizer=str(default_tokenizer())).generate([prompt], GenParams(8))[0].ok
    no_template = model(server, endpoint="chat", tokenizer=bpe.hf.name_or_path)
    assert not bpe.chat_template and no_template.seen_tokens(prompt) == bpe.count(prompt)
    with pytest.warns(PromptTokensWarning, match="chat template adds tokens that the local tokenizer"):
        no_template.generate([prompt], GenParams(8))


def test_a_run_on_the_chat_endpoint_fits_prompts_with_their_chat_template_to_the_length(server, smol, tmp_path,
                                                                                        data_dir):
    """The chat template's own tokens are kept free when the run fits its samples (the adapter's
    prompt_reserve), so what the model sees, template included, is within 97-100 % of the length."""
    import yaml

    from longctx.cli import default_tokenizer, main
    from longctx.models.openai_api import PromptTokensWarning

    def rendered(message):
        return smol.count(smol.hf.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                                      add_generation_prompt=True))

    assert model(server, endpoint="chat", tokenizer=str(default_tokenizer())).prompt_reserve == 30
    assert model(server, tokenizer=str(default_tokenizer())).prompt_reserve == 0  # completions: nothing around
    server.count = rendered  # a server with this chat template
    served = {"name": "served", "backend": "openai", "args": {"base_url": server.url, "model": "fake",
                                                               "endpoint": "chat", "tokenizer": str(default_tokenizer())}}
    spec = {"name": "chat", "models": [served], "tasks": ["niah_single_1", "vt"], "lengths": [1024], "samples": 2,
            "data_dir": str(data_dir), "db": str(tmp_path / "run.sqlite")}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTokensWarning)
        assert main(["run", str(tmp_path / "spec.yaml")]) == 0
    assert len(server.requests) == 4
    for r in server.requests:
        seen = rendered(r["body"]["messages"][0]["content"]) + r["body"]["max_tokens"]
        assert 0.97 * 1024 <= seen <= 1024, seen


def test_the_key_is_not_kept_on_the_adapter(server, monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    m = model(server, api_key_env="MY_KEY")
    m.generate(["x"], GenParams(2))
    assert server.requests[-1]["auth"] == f"Bearer {SECRET}"
    assert SECRET not in repr(vars(m))


def test_extra_body_adds_the_servers_own_parameters_but_never_ours(server):
    from longctx.models.openai_api import OWN_FIELDS

    pins = {"repeat_penalty": 1.0, "top_k": 1}
    for endpoint in ("completions", "chat"):
        got = model(server, endpoint=endpoint, extra_body=pins).generate(["p"], GenParams(5, stop=("zz",)))
        body = server.requests[-1]["body"]
        assert got[0].ok and body["repeat_penalty"] == 1.0 and body["top_k"] == 1 and body["temperature"] == 0
        assert set(body) - set(pins) <= OWN_FIELDS  # what longctx sets itself is all in OWN_FIELDS
    model(server).generate(["p"], GenParams(5))
    assert set(server.requests[-1]["body"]) == {"model", "prompt", "max_tokens", "temperature"}  # none by default
    for clash in ({"temperature": 0.7}, {"max_tokens": 10_000}, {"model": "other", "top_k": 1}):
        with pytest.raises(UsageError, match="extra_body cannot set"):
            model(server, extra_body=clash)
    with pytest.raises(UsageError, match="extra_body must be dict"):
        model(server, extra_body="top_k=1")


def test_bad_options_are_usage_errors(server):
    with pytest.raises(UsageError, match="endpoint"):
        model(server, endpoint="embeddings")
    with pytest.raises(UsageError, match="concurrency"):
        model(server, concurrency=0)
