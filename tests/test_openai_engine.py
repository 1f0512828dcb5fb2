"""The OpenAI-compatible engine: against a real `transformers serve` (the tiny LM and the tiny LLaVA,
started here on free ports, offline), and against a small local HTTP stub for what a real server
will not do on cue (fail N times, answer 429, hang, count connections)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from serving import free_port, transformers_serve

from pipeline.engines import load_engine
from pipeline.engines.base import GenerationRequest, GenerationResult
from pipeline.engines.config import OpenAIEngineConfig
from pipeline.engines.openai_engine import OpenAIEngine, attach_frames, backoff_delay, parse_response, request_payload


@pytest.fixture(scope="module")
def vlm_server(tiny_vlm, tmp_path_factory):
    with transformers_serve(tiny_vlm, tmp_path_factory.mktemp("serve-vlm") / "serve.log") as url:
        yield tiny_vlm, url


def _engine(model: str, url: str, **overrides) -> OpenAIEngine:
    settings = dict(model=model, base_url=url, max_concurrency=2, timeout_seconds=120.0, retries=0)
    return OpenAIEngine(OpenAIEngineConfig(**{**settings, **overrides}), backoff_seconds=0.01)


def _greedy(folder: str, input_ids: list[int], max_tokens: int) -> str:
    """What the tiny model says, greedily, run here in-process: the server must return the same."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        out = model.generate(torch.tensor([input_ids]), max_new_tokens=max_tokens, do_sample=False)
    return tokenizer.decode(out[0, len(input_ids):], skip_special_tokens=True)


def test_chat_and_raw_prompt_against_transformers_serve(lm_server):
    from transformers import AutoTokenizer

    folder, url = lm_server
    chat = [{"role": "system", "content": "Answer in tags."}, {"role": "user", "content": "A dog runs."}]
    requests = [
        GenerationRequest("chat", messages=chat, max_tokens=6, temperature=0.0),
        GenerationRequest("raw", prompt="Once upon a time", max_tokens=4, temperature=0.0),
        GenerationRequest("chat-1", messages=chat, max_tokens=1, temperature=0.0),
    ]
    results = load_engine(OpenAIEngineConfig(model=folder, base_url=url, retries=0)).generate(requests)

    assert [r.id for r in results] == ["chat", "raw", "chat-1"]
    assert [r.error for r in results] == [None, None, None]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    chat_ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    chat_ids = list(chat_ids["input_ids"])
    raw_ids = tokenizer("Once upon a time")["input_ids"]
    assert len(raw_ids) == 1 + len("Once upon a time")  # byte-level, plus <|begin_of_text|>
    # Token counts come from the server's `usage`; the text is the model's, untouched.
    for result, ids, max_tokens in ((results[0], chat_ids, 6), (results[1], raw_ids, 4), (results[2], chat_ids, 1)):
        assert result.prompt_tokens == len(ids)
        assert 0 < result.output_tokens <= max_tokens
        assert result.finish_reason in ("stop", "length")
        assert (result.finish_reason == "length") == (result.output_tokens == max_tokens)
        assert result.text == _greedy(folder, ids, max_tokens)


def test_same_requests_same_answers(lm_server):
    folder, url = lm_server
    requests = [GenerationRequest(f"r{i}", messages=[{"role": "user", "content": f"video {i}"}], max_tokens=5,
                                  temperature=0.7, top_p=0.9, seed=3) for i in range(4)]
    engine = _engine(folder, url)
    assert engine.generate(requests) == engine.generate(requests)


def test_a_model_the_server_does_not_serve_is_an_error_result_not_retried(lm_server):
    folder, url = lm_server
    engine = _engine("not-this-model", url, retries=3)
    engine.backoff_seconds = 5.0  # a retry would show in the time taken
    started = time.monotonic()
    [result] = engine.generate([GenerationRequest("x", prompt="hi", max_tokens=2)])
    assert time.monotonic() - started < 5.0
    assert (result.text, result.finish_reason) == ("", "error")
    assert "HTTP 400" in result.error and "not-this-model" in result.error


def test_frames_reach_a_vision_language_server(vlm_server):
    folder, url = vlm_server
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    messages = [{"role": "user", "content": "What happens in the video?"}]
    requests = [GenerationRequest(f"k{k}", messages=messages, frames=frames[:k], max_tokens=3, temperature=0.0)
                for k in (0, 1, 3)]
    results = _engine(folder, url).generate(requests)
    assert [r.error for r in results] == [None, None, None]
    # Each image becomes LLaVA's 16 image tokens in the prompt the server built.
    base = results[0].prompt_tokens
    assert [r.prompt_tokens - base for r in results] == [0, 16, 48]
    assert all(r.output_tokens > 0 for r in results)


# ---- requests and responses as JSON -------------------------------------------------------------


def _jpeg_mean(data_url: str) -> np.ndarray:
    from PIL import Image

    header, payload = data_url.split(",", 1)
    assert header == "data:image/jpeg;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")).mean(axis=(0, 1))


def test_chat_payload_puts_frames_in_order_before_the_last_user_text():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [np.full((16, 24, 3), c, dtype=np.uint8) for c in colours]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "describe"}]
    request = GenerationRequest("v1", messages=messages, frames=frames, temperature=0.3, top_p=0.8,
                                max_tokens=77, seed=11)
    path, body = request_payload(request, "some-model")

    assert path == "/chat/completions"
    assert {k: body[k] for k in ("model", "temperature", "top_p", "max_tokens", "seed", "stream")} == {
        "model": "some-model", "temperature": 0.3, "top_p": 0.8, "max_tokens": 77, "seed": 11, "stream": False}
    assert body["messages"][:3] == messages[:3]
    content = body["messages"][3]["content"]
    assert [part["type"] for part in content] == ["image_url"] * 3 + ["text"]
    assert content[3] == {"type": "text", "text": "describe"}
    for part, colour in zip(content, colours):
        assert np.abs(_jpeg_mean(part["image_url"]["url"]) - colour).max() < 8
    assert messages[3] == {"role": "user", "content": "describe"}  # the caller's messages are untouched
    json.dumps(body)  # it is all JSON


def test_raw_prompt_payload_and_content_parts():
    path, body = request_payload(GenerationRequest("p", prompt="Once", max_tokens=3), "m")
    assert path == "/completions" and body["prompt"] == "Once" and "messages" not in body
    parts = [{"type": "image_url", "image_url": {"url": "x"}}]
    listed = [{"role": "user", "content": [{"type": "text", "text": "a"}]}]
    assert attach_frames(listed, parts)[0]["content"] == [parts[0], {"type": "text", "text": "a"}]
    with pytest.raises(ValueError, match="user message"):
        attach_frames([{"role": "system", "content": "s"}], parts)


def test_parse_response_reads_text_reason_and_usage():
    chat = GenerationRequest("c", messages=[{"role": "user", "content": "x"}])
    raw = GenerationRequest("r", prompt="x")
    body = {"choices": [{"message": {"content": "tags"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5}}
    assert parse_response(chat, body) == GenerationResult("c", "tags", "length", 12, 5)
    result = parse_response(raw, {"choices": [{"text": "go", "finish_reason": "stop"}]})
    assert (result.text, result.finish_reason, result.prompt_tokens, result.output_tokens) == ("go", "stop", 0, 0)
    tool = parse_response(chat, {"choices": [{"message": {"content": None}, "finish_reason": "tool_calls"}]})
    assert (tool.text, tool.finish_reason) == ("", "stop")
    broken = parse_response(chat, {"error": "nope"})
    assert broken.finish_reason == "error" and "no choices" in broken.error


def test_backoff_doubles_honours_retry_after_and_is_capped():
    assert [backoff_delay(a, 0.5, 30.0) for a in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(0, 0.5, 30.0, "3") == 3.0
    assert backoff_delay(0, 0.5, 30.0, "Wed, 21 Oct 2015 07:28:00 GMT") == 0.5
    assert backoff_delay(10, 0.5, 30.0) == 30.0 and backoff_delay(0, 0.5, 30.0, "600") == 30.0


# ---- a local stub server: retries, timeouts, concurrency ----------------------------------------


class _Stub(ThreadingHTTPServer):
    daemon_threads = True  # a hanging handler must not hold up the test's end

    def __init__(self, respond):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.respond = respond  # (body, call number) -> (status, payload, headers, delay)
        self.calls: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        stub = self.server
        with stub.lock:
            stub.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
            number = len(stub.calls)
            stub.in_flight += 1
            stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
        status, payload, headers, delay = stub.respond(body, number)
        time.sleep(delay)
        with stub.lock:  # before answering: the client cannot send its next request before this
            stub.in_flight -= 1
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a hanging request
            pass


@contextlib.contextmanager
def stub_server(respond):
    server = _Stub(respond)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _answer(body: dict) -> dict:
    said = body.get("prompt") or body["messages"][-1]["content"]
    return {"choices": [{"text": f"re {said}", "message": {"content": f"re {said}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def ok(body, number):
    return 200, _answer(body), {}, 0.0


def _stub_engine(stub, **overrides) -> OpenAIEngine:
    settings = dict(model="stub", base_url=stub.url, max_concurrency=4, timeout_seconds=5.0, retries=2)
    return OpenAIEngine(OpenAIEngineConfig(**{**settings, **overrides}), backoff_seconds=0.01)


def _prompts(*texts: str, **kwargs) -> list[GenerationRequest]:
    return [GenerationRequest(f"id-{i}", prompt=text, **kwargs) for i, text in enumerate(texts)]


def test_server_errors_are_retried_until_they_pass():
    def flaky(body, number):
        return (503, {"error": "warming up"}, {}, 0.0) if number <= 2 else ok(body, number)

    with stub_server(flaky) as stub:
        [result] = _stub_engine(stub, retries=2).generate(_prompts("hello"))
        assert (result.text, result.finish_reason, result.error) == ("re hello", "stop", None)
        assert len(stub.calls) == 3
    with stub_server(flaky) as stub:
        [result] = _stub_engine(stub, retries=1).generate(_prompts("hello"))
        assert result.finish_reason == "error" and result.text == ""
        assert "HTTP 503" in result.error and "warming up" in result.error and "2 attempts" in result.error
        assert len(stub.calls) == 2


def test_429_waits_as_long_as_retry_after_says():
    def limited(body, number):
        return (429, {"error": "slow down"}, {"Retry-After": "0.6"}, 0.0) if number == 1 else ok(body, number)

    with stub_server(limited) as stub:
        started = time.monotonic()
        [result] = _stub_engine(stub).generate(_prompts("x"))
        assert result.error is None and len(stub.calls) == 2
        assert time.monotonic() - started >= 0.6


def test_client_errors_are_not_retried_and_fail_only_their_request():
    def picky(body, number):
        return (422, {"detail": "bad field"}, {}, 0.0) if body["prompt"] == "bad" else ok(body, number)

    with stub_server(picky) as stub:
        results = _stub_engine(stub, retries=3).generate(_prompts("a", "bad", "c"))
        assert [r.text for r in results] == ["re a", "", "re c"]
        assert results[1].finish_reason == "error" and "HTTP 422" in results[1].error
        assert sum(call["body"]["prompt"] == "bad" for call in stub.calls) == 1


def test_an_unreachable_server_gives_error_results_in_order():
    engine = OpenAIEngine(OpenAIEngineConfig(model="m", base_url=f"http://127.0.0.1:{free_port()}/v1", retries=2),
                          backoff_seconds=0.01)
    results = engine.generate(_prompts("a", "b", "c"))
    assert [r.id for r in results] == ["id-0", "id-1", "id-2"]
    assert all(r.finish_reason == "error" and "connection error" in r.error and "3 attempts" in r.error
               for r in results)


def test_concurrency_is_bounded():
    def slow(body, number):
        return 200, _answer(body), {}, 0.25

    with stub_server(slow) as stub:
        results = _stub_engine(stub, max_concurrency=3).generate(_prompts(*"abcdefghi"))
        assert [r.text for r in results] == [f"re {c}" for c in "abcdefghi"]
        assert stub.max_in_flight == 3
    with stub_server(slow) as stub:
        _stub_engine(stub, max_concurrency=1).generate(_prompts("a", "b", "c"))
        assert stub.max_in_flight == 1


def _hangs(body, number):
    return 200, _answer(body), {}, (30.0 if body["prompt"] == "hang" else 0.0)


def test_a_timed_out_request_fails_alone_and_is_not_retried():
    with stub_server(_hangs) as stub:
        started = time.monotonic()
        results = _stub_engine(stub, timeout_seconds=1.0, retries=3).generate(_prompts("a", "hang", "c"))
        elapsed = time.monotonic() - started
        assert [r.text for r in results] == ["re a", "", "re c"]
        assert results[1].finish_reason == "error" and "timed out after 1 s" in results[1].error
        assert sum(call["body"]["prompt"] == "hang" for call in stub.calls) == 1
        assert elapsed < 3.0


def test_a_hanging_request_holds_its_slot_no_longer_than_its_timeout():
    # One slot: everything after the hanging request waits for it, but only until its timeout.
    with stub_server(_hangs) as stub:
        started = time.monotonic()
        results = _stub_engine(stub, timeout_seconds=1.0, max_concurrency=1).generate(_prompts("hang", "b", "c", "d"))
        elapsed = time.monotonic() - started
        assert [r.text for r in results] == ["", "re b", "re c", "re d"]
        assert 1.0 <= elapsed < 3.0


def test_api_key_comes_from_the_named_variable(monkeypatch):
    with stub_server(ok) as stub:
        monkeypatch.setenv("TVR_TEST_OPENAI_KEY", "sekret")
        _stub_engine(stub, api_key_env="TVR_TEST_OPENAI_KEY").generate(_prompts("a"))
        monkeypatch.delenv("TVR_TEST_OPENAI_KEY")
        _stub_engine(stub, api_key_env="TVR_TEST_OPENAI_KEY").generate(_prompts("b"))
        headers = [{k.lower(): v for k, v in call["headers"].items()} for call in stub.calls]
        assert headers[0]["authorization"] == "Bearer sekret"
        assert "authorization" not in headers[1]


def test_a_request_that_cannot_be_sent_fails_alone():
    frame = np.zeros((4, 4, 3), dtype=np.uint8)
    with stub_server(ok) as stub:
        results = _stub_engine(stub).generate([
            GenerationRequest("raw-with-frames", prompt="x", frames=[frame]),
            GenerationRequest("bad-frame", messages=[{"role": "user", "content": "x"}], frames=[frame[..., 0]]),
            GenerationRequest("not-json", messages=[{"role": "user", "content": {1, 2}}]),
            GenerationRequest("fine", prompt="y"),
        ])
        assert [r.finish_reason for r in results] == ["error", "error", "error", "stop"]
        assert "frames need a chat request" in results[0].error and "RGB uint8" in results[1].error
        assert "not JSON serializable" in results[2].error
        assert len(stub.calls) == 1


def test_generate_works_inside_a_running_event_loop():
    async def main():
        return _stub_engine(stub).generate(_prompts("from a loop"))

    with stub_server(ok) as stub:
        [result] = asyncio.run(main())
        assert result.text == "re from a loop"
    assert _stub_engine(stub).generate([]) == []
