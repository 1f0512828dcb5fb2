"""The OpenAI-compatible backend: any server that speaks `/v1/chat/completions` and `/v1/completions`
(`vllm serve`, SGLang, `transformers serve`, a hosted API).

    engine = OpenAIEngine(OpenAIEngineConfig(model="Qwen/Qwen2.5-VL-7B-Instruct", base_url="http://gpu:8000/v1"))
    results = engine.generate(requests)        # one result per request, in order

What it promises:
- A chat request (`messages`) goes to `/chat/completions`; a raw `prompt` to `/completions`, as is.
  Frames go as base64 JPEG `image_url` parts, in time order, at the front of the last user
  message's content (before its text), the way OpenAI-style servers take several images.
- `temperature`, `top_p`, `max_tokens` and `seed` are sent with every request. Whether `seed`
  makes sampling repeatable is up to the server: vLLM seeds each request; `transformers serve`
  calls `torch.manual_seed` when the request arrives, so only one-at-a-time requests repeat.
- At most `max_concurrency` requests are in flight at once.
- Connection failures, HTTP 429 and 5xx are retried up to `retries` times with exponential
  backoff (a `Retry-After` header is honoured, capped); other HTTP errors are not (a 400 will not
  heal). Each attempt has `timeout_seconds` in all; an attempt that runs out is not retried (a
  generation that is too slow for the budget will be too slow again) and its request fails.
- A request that fails gets `GenerationResult(text="", finish_reason="error", error=...)`; the
  others are unaffected. `generate` itself raises only for a programming error.
- The key is read from the environment variable named by `api_key_env` and sent as a bearer
  token; no variable (a local server) sends none.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import copy
import io
import json
import os
from typing import Any

import numpy as np

from pipeline.engines.base import GenerationRequest, GenerationResult
from pipeline.engines.config import OpenAIEngineConfig

JPEG_QUALITY = 95  # frames are JPEG already (keyframes stage); re-encoding near-losslessly keeps them as stored
_CONNECT_SECONDS = 10.0  # a server that does not accept a connection in 10 s is down: retry, don't wait it out
_ERROR_BODY_CHARS = 300  # of a failed response's body, kept in the error message


# ---- requests and responses as JSON (pure functions) --------------------------------------------


def frame_to_data_url(frame: np.ndarray) -> str:
    """An RGB uint8 [H, W, 3] frame as a `data:image/jpeg;base64,...` URL."""
    from PIL import Image

    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"a frame must be RGB uint8 [H, W, 3], got {frame.dtype} {list(frame.shape)}")
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def attach_frames(messages: list[dict[str, Any]], parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with the content `parts` (one per frame, in order) put at the front of the last user
    message's content; the caller's messages are not modified. Every backend places frames this way,
    so a prompt template says where the frames are by which message is the last user one."""
    if not parts:
        return messages
    messages = copy.deepcopy(messages)
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}] if content else []
            message["content"] = [*parts, *(content or [])]
            return messages
    raise ValueError("a request with frames needs a user message to carry them")


def request_payload(request: GenerationRequest, model: str) -> tuple[str, dict[str, Any]]:
    """The endpoint (relative to the base URL) and the JSON body for one request."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stream": False,
    }
    if request.prompt is not None:
        if request.frames:
            raise ValueError("frames need a chat request (messages); a raw prompt has nowhere to put them")
        return "/completions", {**body, "prompt": request.prompt}
    parts = [{"type": "image_url", "image_url": {"url": frame_to_data_url(f)}} for f in request.frames]
    return "/chat/completions", {**body, "messages": attach_frames(request.messages, parts)}


def parse_response(request: GenerationRequest, data: Any) -> GenerationResult:
    """A successful (HTTP 200) response body as a result. A body of another shape (no first choice,
    a text that is not a string, token counts that are not counts) is an error result naming what
    was wrong, never an exception: one broken answer fails its request only."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return failed(request, f"unexpected response (no choices): {_excerpt(data)}")
    choice = choices[0]
    if request.prompt is not None:
        where, text = "choices[0].text", choice.get("text")
    else:
        message = choice.get("message")
        if message is not None and not isinstance(message, dict):
            return failed(request, f"unexpected response: choices[0].message is {_kind(message)}, not an object: "
                                   f"{_excerpt(data)}")
        where, text = "choices[0].message.content", (message or {}).get("content")
    if text is not None and not isinstance(text, str):
        return failed(request, f"unexpected response: {where} is {_kind(text)}, not a string: {_excerpt(data)}")
    text = text or ""
    if not _is_unicode(text):
        return failed(request, f"unexpected response: {where} is not valid Unicode (a lone surrogate)")
    usage = data.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return failed(request, f"unexpected response: usage is {_kind(usage)}, not an object: {_excerpt(data)}")
    counts = []
    for name in ("prompt_tokens", "completion_tokens"):
        value = (usage or {}).get(name)
        count = _count(value)
        if count is None:
            return failed(request, f"unexpected response: usage.{name} is {_kind(value)}, not a token count: "
                                   f"{_excerpt(data)}")
        counts.append(count)
    # "length" is the one reason that says the text is cut; anything else means the model (or the
    # server, for tool calls and filters) ended it.
    finish = "length" if choice.get("finish_reason") == "length" else "stop"
    return GenerationResult(id=request.id, text=text, finish_reason=finish, prompt_tokens=counts[0],
                            output_tokens=counts[1])


def _count(value: Any) -> int | None:
    """A token count as an int (absent: 0), or None when it is not one (a row's column is int64)."""
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        return None
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"the number {value!r}" if isinstance(value, (int, float)) else type(value).__name__)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON's "\ud800" escapes decode to lone surrogates, which Parquet refuses
        return False
    return True


def _excerpt(data: Any) -> str:
    return str(data)[:_ERROR_BODY_CHARS]


def failed(request: GenerationRequest, why: str) -> GenerationResult:
    return GenerationResult(id=request.id, text="", finish_reason="error", error=why)


def backoff_delay(attempt: int, base: float, cap: float, retry_after: str | None = None) -> float:
    """Seconds to wait before retry number `attempt + 1`: base * 2**attempt, at least what the
    server's `Retry-After` (seconds) asked for, never more than `cap`."""
    delay = base * 2**attempt
    if retry_after:
        try:
            delay = max(delay, float(retry_after))
        except ValueError:  # an HTTP date: rare from model servers, and the backoff is a fine stand-in
            pass
    return min(delay, cap)


# ---- the engine ---------------------------------------------------------------------------------


class OpenAIEngine:
    """Sends requests to an OpenAI-compatible server; see the module docstring for the promises.
    `backoff_seconds` (the first retry's wait) and `max_backoff_seconds` are here for tests and
    impatient users; the config decides everything else."""

    name = "openai"

    def __init__(self, config: OpenAIEngineConfig, *, backoff_seconds: float = 0.5, max_backoff_seconds: float = 30.0):
        self.config = config
        self.model = config.model
        self.revision = config.revision
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._url = config.base_url.rstrip("/")
        key = os.environ.get(config.api_key_env) if config.api_key_env else None
        self._headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if not requests:
            return []
        return _run_sync(self._generate_all(list(requests)))

    def close(self) -> None:
        """Nothing to release: each `generate` call opens and closes its own connections."""

    async def _generate_all(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        import httpx2  # here, not at the top: a run that never uses this backend never imports its client

        limit = self.config.max_concurrency
        # The whole-attempt deadline is asyncio's (below); httpx2 only bounds the connect, so that
        # a refused or unreachable server fails fast and is retried.
        timeout = httpx2.Timeout(None, connect=min(self.config.timeout_seconds, _CONNECT_SECONDS))
        limits = httpx2.Limits(max_connections=limit, max_keepalive_connections=limit)
        slots = asyncio.Semaphore(limit)
        async with httpx2.AsyncClient(headers=self._headers, timeout=timeout, limits=limits) as client:
            return list(await asyncio.gather(*(self._one(client, slots, r) for r in requests)))

    async def _one(self, client, slots: asyncio.Semaphore, request: GenerationRequest) -> GenerationResult:
        import httpx2

        retryable = (httpx2.NetworkError, httpx2.ConnectTimeout, httpx2.PoolTimeout, httpx2.RemoteProtocolError)
        seconds = self.config.timeout_seconds
        attempts = self.config.retries + 1
        content = None
        for attempt in range(attempts):
            retry_after = None
            async with slots:  # held for the attempt only: a request waiting out its backoff frees its slot
                if content is None:  # built as slots free up, not all at once: bodies hold the frames
                    try:
                        path, body = request_payload(request, self.model)
                        content = json.dumps(body).encode()  # a body that is not JSON fails its request only
                    except (ValueError, TypeError) as exc:
                        return failed(request, str(exc))
                try:
                    response = await asyncio.wait_for(client.post(self._url + path, content=content), seconds)
                except (asyncio.TimeoutError, httpx2.ReadTimeout, httpx2.WriteTimeout):
                    return failed(request, f"timed out after {seconds:g} s (POST {self._url}{path})")
                except retryable as exc:
                    why = f"connection error: {type(exc).__name__}: {exc} (POST {self._url}{path})"
                except httpx2.HTTPError as exc:  # a bad URL, an unsupported scheme: retrying won't help
                    return failed(request, f"{type(exc).__name__}: {exc} (POST {self._url}{path})")
                else:
                    if response.status_code == 200:
                        try:
                            return parse_response(request, response.json())
                        except ValueError:
                            return failed(request, f"response is not JSON: {response.text[:_ERROR_BODY_CHARS]}")
                    why = f"HTTP {response.status_code}: {response.text[:_ERROR_BODY_CHARS]}"
                    if response.status_code != 429 and response.status_code < 500:
                        return failed(request, why)
                    retry_after = response.headers.get("retry-after")
            if attempt + 1 < attempts:
                await asyncio.sleep(backoff_delay(attempt, self.backoff_seconds, self.max_backoff_seconds, retry_after))
        return failed(request, f"{why} (gave up after {attempts} attempts)")


def _run_sync(coroutine):
    """Run `coroutine` to completion from synchronous code, also when the calling thread already
    runs an event loop (an async Ray actor, a notebook): then on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
