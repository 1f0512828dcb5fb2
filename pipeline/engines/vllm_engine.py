"""The vLLM backend, for GPU clusters; needs the `[gpu]` extra (`ray[llm]`, which pins the vLLM that
Ray Data LLM is tested with). Two ways in, the same requests and the same results:

    # 1. A whole Dataset through Ray Data LLM (preferred for a stage: Ray runs and scales the engines)
    run = VllmEngine.processor(config, to_request=row_to_request, keep=["video_id"], multimodal=True)
    results = run(dataset)        # rows: id, text, finish_reason, prompt_tokens, output_tokens, error, video_id

    # 2. In-process, behind the common `Engine` interface (one `vllm.LLM` on this worker's GPU)
    engine = VllmEngine.load(config)
    engine.generate(requests)

Written against Ray 2.58+ `ray.data.llm` (`vLLMEngineProcessorConfig`, `build_processor`, nested
stage configs, `should_continue_on_error`) and vLLM's `LLM.chat` / `LLM.generate` with
`SamplingParams`. Neither is importable here: they are imported inside the methods that use them,
and everything that maps our requests to theirs and their outputs back is a pure function below,
tested without them.

Frames go as `image_pil` content parts (PIL images: no lossy re-encode), one per frame, in order,
at the front of the last user message, placed as the OpenAI backend places its `image_url` parts.
vLLM accepts only `limit_mm_per_prompt` images a prompt: set it in `engine_kwargs` (e.g.
`limit_mm_per_prompt: {image: 8}`).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, fields
from typing import Any, Callable, Iterable

from pipeline.engines.base import GenerationRequest, GenerationResult
from pipeline.engines.config import VllmEngineConfig
from pipeline.engines.openai_engine import attach_frames

MISSING = "vLLM is not installed: install the [gpu] extra (pip install -e '.[gpu]': ray[llm] and its vLLM)"
# Our columns inside Ray Data LLM's rows; underscored so they cannot meet a dataset's own columns or
# the processor's (it writes `request_id`, `prompt`, `generated_text`, ... and reads `model` as a LoRA name).
ID_COLUMN, MAX_TOKENS_COLUMN = "_gen_id", "_gen_max_tokens"
RESULT_COLUMNS = tuple(f.name for f in fields(GenerationResult))
# Config fields that must not be set a second way through engine_kwargs: the config's are the
# ones recorded in the stage's version.
_OWN_KEYS = ("model", "revision", "tokenizer_revision", "trust_remote_code")


# ---- pure mapping: requests -> vLLM, vLLM -> results ------------------------------------------


def llm_kwargs(config: VllmEngineConfig) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)`: the config's model, revision (for weights and
    tokenizer alike) and trust_remote_code, then `engine_kwargs` as they are."""
    _check_engine_kwargs(config)
    kwargs: dict[str, Any] = {"model": config.model, "trust_remote_code": config.trust_remote_code}
    if config.revision:
        kwargs.update(revision=config.revision, tokenizer_revision=config.revision)
    return {**kwargs, **config.engine_kwargs}


def sampling_kwargs(request: GenerationRequest, *, detokenize: bool = True) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams(...)` (also the `sampling_params` column of a
    Ray Data LLM row). `detokenize=False` when Ray's detokenize stage decodes the tokens instead."""
    kwargs = {"temperature": request.temperature, "top_p": request.top_p, "max_tokens": request.max_tokens,
              "seed": request.seed}
    if not detokenize:
        kwargs["detokenize"] = False
    return kwargs


def chat_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """The request's messages with its frames as `image_pil` parts (see the module docstring)."""
    from PIL import Image

    parts = [{"type": "image_pil", "image_pil": Image.fromarray(frame)} for frame in request.frames]
    return attach_frames(request.messages, parts)


def request_row(request: GenerationRequest, *, chat: bool = True, multimodal: bool = False) -> dict[str, Any]:
    """The columns a Ray Data LLM vLLM processor reads for one request: `messages` (chat) or
    `prompt` (raw), `sampling_params`, and our id and max_tokens (to tell "length" from "stop").
    A processor serves one kind of request, so a request of the other kind is an error."""
    if chat and request.messages is None:
        raise ValueError(f"request {request.id}: this processor takes chat requests (messages), not a raw prompt")
    if not chat and request.prompt is None:
        raise ValueError(f"request {request.id}: this processor takes raw prompts, not chat messages")
    if request.frames and not multimodal:
        raise ValueError(f"request {request.id} has frames: build the processor with multimodal=True")
    row: dict[str, Any] = {
        ID_COLUMN: request.id,
        MAX_TOKENS_COLUMN: request.max_tokens,
        # Ray's detokenize stage (on by default) decodes the tokens, so vLLM need not.
        "sampling_params": sampling_kwargs(request, detokenize=False),
    }
    if chat:
        row["messages"] = chat_messages(request)
    else:
        row["prompt"] = request.prompt
    return row


def result_from_row(row: dict[str, Any]) -> GenerationResult:
    """A Ray Data LLM output row as a result. A row that failed carries `__inference_error__`
    (with `should_continue_on_error`). Ray's rows have no finish reason: a row that used all of its
    max_tokens is taken as cut ("length"), which misnames the rare answer that ends exactly there."""
    request_id = str(row[ID_COLUMN])
    error = row.get("__inference_error__") or ""
    if error:
        return GenerationResult(id=request_id, text="", finish_reason="error", error=str(error))
    output_tokens = int(row.get("num_generated_tokens") or 0)
    return GenerationResult(
        id=request_id,
        text=str(row.get("generated_text") or ""),
        finish_reason="length" if output_tokens >= int(row[MAX_TOKENS_COLUMN]) else "stop",
        prompt_tokens=int(row.get("num_input_tokens") or 0),
        output_tokens=output_tokens,
    )


def result_from_output(request: GenerationRequest, output: Any) -> GenerationResult:
    """A `vllm.RequestOutput` as a result: its first completion's text, finish reason and tokens."""
    completion = output.outputs[0]
    reason = completion.finish_reason
    if reason not in (None, "stop", "length"):  # "abort": the engine dropped it
        return GenerationResult(id=request.id, text="", finish_reason="error", error=f"vLLM finished with {reason!r}")
    return GenerationResult(
        id=request.id,
        text=completion.text,
        finish_reason="length" if reason == "length" else "stop",
        prompt_tokens=len(output.prompt_token_ids or []),
        output_tokens=len(completion.token_ids),
    )


def processor_config_kwargs(config: VllmEngineConfig, *, chat: bool = True, multimodal: bool = False,
                            **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for `ray.data.llm.vLLMEngineProcessorConfig(...)`. Failed rows continue
    (they become error results); `overrides` (concurrency, accelerator_type, runtime_env,
    max_concurrent_batches, per-stage configs, ...) are passed as they are.

    Ray's chat-template and tokenizer stages load `model` with no revision, so a pinned revision
    of a hub model would be tokenized with the newest files: name a local download instead."""
    check_config(config, ray_data=True)
    engine_kwargs = {**config.engine_kwargs, "trust_remote_code": config.trust_remote_code}
    return {
        "model_source": config.model,
        "engine_kwargs": engine_kwargs,
        "batch_size": config.batch_size,
        "should_continue_on_error": True,
        "chat_template_stage": chat,
        "tokenize_stage": True,
        "detokenize_stage": True,
        "prepare_multimodal_stage": multimodal,
        **overrides,
    }


def output_row(row: dict[str, Any], keep: Iterable[str] = ()) -> dict[str, Any]:
    """What the processor returns for one row: the result's fields, plus the `keep` columns of the
    input row (carried through Ray's stages)."""
    return {**asdict(result_from_row(row)), **{name: row[name] for name in keep}}


def check_config(config: VllmEngineConfig, *, ray_data: bool = False) -> None:
    """What makes a config unusable, found without vLLM: `engine_kwargs` setting the config's own
    fields, and for Ray Data LLM (`ray_data`) a pinned revision of a hub model (see
    `processor_config_kwargs`). A ValueError saying which."""
    _check_engine_kwargs(config)
    if ray_data and config.revision and not os.path.isdir(config.model):
        raise ValueError(
            f"Ray Data LLM loads {config.model!r}'s tokenizer without a revision: download revision "
            f"{config.revision} (hf download {config.model} --revision {config.revision} --local-dir DIR) "
            "and name DIR as the model")


def _check_engine_kwargs(config: VllmEngineConfig) -> None:
    doubled = sorted(set(config.engine_kwargs) & set(_OWN_KEYS))
    if doubled:
        raise ValueError(f"engine_kwargs may not set {', '.join(doubled)}: use the engine config's own fields")


# ---- the engine ---------------------------------------------------------------------------------


class VllmEngine:
    """One in-process `vllm.LLM`; `generate` runs chat requests through `LLM.chat` and raw prompts
    through `LLM.generate`, each batch in one call (vLLM schedules it), results in request order.
    When a batch raises, its requests are run one by one so that only the bad one fails."""

    name = "vllm"

    def __init__(self, config: VllmEngineConfig, llm: Any):
        self.config = config
        self.model = config.model
        self.revision = config.revision
        self._llm = llm

    @classmethod
    def load(cls, config: VllmEngineConfig) -> VllmEngine:
        vllm = _import_vllm()
        return cls(config, vllm.LLM(**llm_kwargs(config)))

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results: dict[int, GenerationResult] = {
            i: GenerationResult(r.id, "", "error", error="frames need a chat request (messages), not a raw prompt")
            for i, r in enumerate(requests) if r.prompt is not None and r.frames}
        chats = [i for i, r in enumerate(requests) if r.messages is not None]
        prompts = [i for i, r in enumerate(requests) if r.prompt is not None and i not in results]
        for indices, run in ((chats, self._chat), (prompts, self._complete)):
            results.update(zip(indices, self._isolated(run, [requests[i] for i in indices])))
        return [results[i] for i in range(len(requests))]

    def close(self) -> None:
        self._llm = None  # vLLM frees its GPU memory when the LLM is collected

    def _chat(self, requests: list[GenerationRequest]) -> list[Any]:
        vllm = _import_vllm()
        params = [vllm.SamplingParams(**sampling_kwargs(r)) for r in requests]
        return self._llm.chat([chat_messages(r) for r in requests], params, use_tqdm=False)

    def _complete(self, requests: list[GenerationRequest]) -> list[Any]:
        vllm = _import_vllm()
        params = [vllm.SamplingParams(**sampling_kwargs(r)) for r in requests]
        return self._llm.generate([r.prompt for r in requests], params, use_tqdm=False)

    @staticmethod
    def _isolated(run: Callable[[list[GenerationRequest]], list[Any]],
                  requests: list[GenerationRequest]) -> list[GenerationResult]:
        if not requests:
            return []
        try:
            return [result_from_output(r, out) for r, out in zip(requests, run(requests), strict=True)]
        except Exception as exc:  # any engine error becomes the failing request's result
            if len(requests) == 1:
                return [GenerationResult(requests[0].id, "", "error", error=f"{type(exc).__name__}: {exc}")]
        return [result for r in requests for result in VllmEngine._isolated(run, [r])]

    @classmethod
    def processor(cls, config: VllmEngineConfig, to_request: Callable[[dict[str, Any]], GenerationRequest], *,
                  keep: Iterable[str] = (), chat: bool = True, multimodal: bool = False,
                  **overrides: Any) -> Callable[[Any], Any]:
        """A function `Dataset -> Dataset` that runs every row through Ray Data LLM's vLLM processor:
        `to_request(row)` makes the row's request (chat, or raw prompts with `chat=False`; frames
        need `multimodal=True`, which turns on Ray's multimodal stage), and each output row holds the
        result's fields (`id`, `text`, `finish_reason`, `prompt_tokens`, `output_tokens`, `error`)
        plus the input columns named in `keep`. A row whose generation fails is an error row, never
        a failed Dataset. `overrides` go to `vLLMEngineProcessorConfig` (e.g. `concurrency=4`,
        `accelerator_type="H100"`). Builds on the driver; the engines start when the Dataset runs."""
        keep = tuple(keep)
        clash = sorted(set(keep) & set(RESULT_COLUMNS))
        if clash:
            raise ValueError(f"keep columns {clash} would overwrite the result's own columns")
        llm_data = _import_ray_llm()
        processor_config = llm_data.vLLMEngineProcessorConfig(
            **processor_config_kwargs(config, chat=chat, multimodal=multimodal, **overrides))

        def preprocess(row: dict[str, Any]) -> dict[str, Any]:
            # Ray carries every input column through every stage: empty the ones not kept (the
            # frames, say), which the request now holds.
            dropped = {name: None for name in row if name not in keep}
            return {**dropped, **request_row(to_request(row), chat=chat, multimodal=multimodal)}

        # No postprocess: Ray hands failed rows past it untouched, so one map after the processor
        # turns both kinds of row into results.
        built = llm_data.build_processor(processor_config, preprocess=preprocess)
        return lambda dataset: built(dataset).map(output_row, fn_kwargs={"keep": keep})


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    return vllm


def _import_ray_llm():
    # Ray imports vLLM only inside its engine actors; checking here fails on the driver, at once.
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(MISSING)
    try:
        import ray.data.llm as llm_data
    except ImportError as exc:
        raise ImportError(f"{MISSING} ({exc})") from exc
    if not hasattr(llm_data, "build_processor"):  # Ray < 2.53 named it build_llm_processor
        raise ImportError(f"ray.data.llm has no build_processor (Ray {_ray_version()}): {MISSING}")
    return llm_data


def _ray_version() -> str:
    import ray

    return ray.__version__
