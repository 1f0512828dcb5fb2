"""The transformers backend: a causal LM or an image/video-text model in-process, CPU or GPU.

    engine = TransformersEngine.load(TransformersEngineConfig(model="path/or/id"), device="auto")
    results = engine.generate([GenerationRequest(id="a", messages=[{"role": "user", "content": "Hi"}])])

What it promises, beyond `Engine`'s contract:

- Text. `messages` go through the checkpoint's chat template (the processor's for image-text
  models) with the assistant turn opened; control tokens written inside a message (`<|eot_id|>`,
  `<image>`) are encoded as plain text, so a caption can never forge a turn or an image. `prompt`
  is tokenized as it is, with the tokenizer's defaults: no template, only the special tokens the
  tokenizer adds on its own (BOS for Llama-style tokenizers); special-token strings inside a raw
  prompt *are* special tokens (that is how a raw prompt places `<image>`).
- Frames. For an image-text model, a request's frames go in front of the text of its first user
  message: as one video when the processor has a video processor, else as one image each (plain
  LLaVA; and any family when torchvision, which transformers 5's video processors need, is not
  installed). A raw prompt must place the processor's image or video tokens itself.
- Sampling. Only the request decides how tokens are drawn: `temperature` (0: greedy), `top_p`,
  `max_tokens`. The checkpoint's generation_config gives its EOS and pad ids and nothing else (no
  default top_k, temperature or repetition penalty), as an OpenAI-style request means.
- Seeds. Each request draws from its own generator, seeded with `request.seed`: one uniform number
  per generated token, mapped to a token by inverse CDF (see `_SeededSampler`). Torch's global
  generator is never used. So which random numbers a request gets depends on its seed alone, not
  on its batch, its place in it, or the requests before it; its text depends on those numbers and
  on the logits the model computes for it.
  Guaranteed: the same request list with the same config, checkpoint, device, dtype and library
  versions gives the same rows on a rerun, as long as the batches come out the same (they do
  unless a rerun hits the out-of-memory back-off or a batch failure, which split batches) and the
  device's kernels are deterministic (the CPU's are; most CUDA forward kernels are, for one shape).
  Not guaranteed: the same text from another batch size, batch neighbours, device or dtype. The
  sampling does not change, but the logits may, in the last bits, with the padding and shape of
  a batch (kernels are chosen by shape, above all on GPU); such a difference changes a token only
  when the draw lands within that rounding of a boundary between two tokens (or flips a greedy
  argmax between near-equal logits), after which the rest of that text differs. On the CPU, with
  the tiny test models, the rows are the same for every batch size and neighbours (tested).
- Batches of `config.batch_size` requests of similar length (sorted by prompt length, results put
  back in order); a batch that runs out of memory is halved and retried, and the smaller size kept.
  A batch that raises anything else is retried one request at a time, and a request that still
  raises gets `finish_reason="error"` with the error; the others keep their results. A request
  whose prompt and `max_tokens` together exceed the model's context (max_position_embeddings) is
  such an error, raised before the model runs.
- Results. Only the new tokens are decoded, special tokens skipped. `finish_reason` is "stop" when
  the model produced an EOS token, "length" when it reached `max_tokens` first. `prompt_tokens`
  counts every token the model read (image/video placeholder tokens included, padding not);
  `output_tokens` counts the generated tokens, the final EOS included.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from pipeline.engines.base import GenerationRequest, GenerationResult
from pipeline.engines.config import TransformersEngineConfig
from pipeline.models.clip import _Batcher, _is_oom, resolve_device, resolve_dtype

log = logging.getLogger(__name__)


# ---- per-request sampling ------------------------------------------------------------------------


class _SeededSampler(LogitsProcessor):
    """A logits processor that picks each row's next token itself and hands `generate` a score row
    that is -inf everywhere but there, so greedy search (`do_sample=False`) takes exactly that token.

    Why: `generate` samples a whole batch from torch's one global generator, so a request's tokens
    would depend on its neighbours in the batch. Here row i has its own CPU generator seeded with
    its request's seed and draws exactly one uniform number per step, whatever the other rows do;
    the token is found by inverse CDF over the top-p nucleus, in order of falling probability (a
    stable sort, so ties break by token id). Drawing on the CPU gives the same numbers on every
    device. Rows with temperature 0 take the argmax (and still draw, to keep the stream aligned)."""

    def __init__(self, requests: list[GenerationRequest], device: torch.device | str):
        self.generators = [torch.Generator().manual_seed(r.seed & 0xFFFF_FFFF_FFFF_FFFF) for r in requests]
        self.temperature = torch.tensor([r.temperature for r in requests], dtype=torch.float64, device=device)
        self.top_p = torch.tensor([r.top_p for r in requests], dtype=torch.float64, device=device)[:, None]
        self.greedy = self.temperature == 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        uniforms = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in self.generators])
        uniforms = uniforms.to(scores.device)
        # float64: the cumulative sum over a 100k-token vocabulary stays exact enough to honour top_p.
        temperature = torch.where(self.greedy, 1.0, self.temperature)[:, None]
        probs = torch.softmax(scores.double() / temperature, dim=-1)  # -inf scores (masked tokens) -> 0
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        # The nucleus: the most likely tokens until their mass reaches top_p (the first always in).
        mass_before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(mass_before >= self.top_p, 0.0)
        cdf = probs.cumsum(dim=-1)
        # side="right": the first token whose cumulative mass exceeds the draw, so never a token of mass 0.
        position = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True)
        sampled = order.gather(1, position.clamp(max=scores.shape[-1] - 1)).squeeze(1)
        chosen = torch.where(self.greedy, scores.argmax(dim=-1), sampled)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen[:, None], 0.0)


class _RowLimits(StoppingCriteria):
    """A stopping criterion: row i is done after `limits[i]` new tokens (requests in one batch may
    ask for different `max_tokens`; the batch runs to the largest)."""

    def __init__(self, prompt_length: int, limits: list[int], device: torch.device | str):
        self.prompt_length = prompt_length
        self.limits = torch.tensor(limits, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.prompt_length) >= self.limits


# ---- the engine ----------------------------------------------------------------------------------


@dataclass
class _Item:
    """A request ready to batch: its place in the caller's list, and its input (token ids for a
    text model; the conversation or raw prompt for an image-text model, whose processor tokenizes)."""

    index: int
    request: GenerationRequest
    ids: list[int] | None = None
    conversation: list[dict] | None = None
    length: int = 0  # sort key: token count (text model), text length (image-text model)


def _is_image_text(hf_config) -> bool:
    auto_map = getattr(hf_config, "auto_map", None) or {}
    return getattr(hf_config, "vision_config", None) is not None or "AutoModelForImageTextToText" in auto_map


def _check_sampling(request: GenerationRequest) -> None:
    if not request.temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {request.temperature}")
    if not 0 < request.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {request.top_p}")
    if request.max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {request.max_tokens}")


def _error(request: GenerationRequest, error: BaseException) -> GenerationResult:
    return GenerationResult(id=request.id, text="", finish_reason="error",
                            error=f"{type(error).__name__}: {error}")


def _drop_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in record.getMessage()


class TransformersEngine:
    """A loaded model with its tokenizer (and processor, for image-text models). Load once per
    worker; see the module docstring for what `generate` promises."""

    name = "transformers"

    def __init__(self, config: TransformersEngineConfig, network, tokenizer, processor, device: str,
                 dtype: torch.dtype):
        self.config = config
        self.model = config.model
        self.revision = config.revision
        self.network = network  # the torch module (`model` is the id, as every Engine names it)
        self.tokenizer = tokenizer
        self.processor = processor  # None for a text-only model
        self.device = device
        self.dtype = dtype
        self.batcher = _Batcher(config.batch_size, f"TransformersEngine({config.model})")
        eos = network.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = network.generation_config.pad_token_id
        # Positions the model was built for; past them most models go on quietly, producing noise.
        self.context = getattr(network.config.get_text_config(), "max_position_embeddings", None)
        # as_video: frames go to the processor as one video; else as one image each.
        self.as_video = processor is not None and getattr(processor, "video_processor", None) is not None

    @classmethod
    def load(cls, config: TransformersEngineConfig, device: str = "auto", dtype: str = "auto") -> TransformersEngine:
        """Load `config.model` on `device` ('auto', 'cpu', 'cuda', 'cuda:N') in `dtype` ('auto':
        float16 on CUDA, float32 on the CPU): AutoModelForImageTextToText with AutoProcessor when
        the config has a vision tower, else AutoModelForCausalLM with AutoTokenizer.
        `trust_remote_code` is passed exactly as the config says (which allows it only with a
        pinned revision). A checkpoint that lacks weights the model needs is a ValueError."""
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
            GenerationConfig,
        )
        from transformers.utils import logging as hf_logging

        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        source = dict(revision=config.revision, trust_remote_code=config.trust_remote_code)
        hf_config = AutoConfig.from_pretrained(config.model, **source)
        if _is_image_text(hf_config):
            processor = AutoProcessor.from_pretrained(config.model, **source)
            tokenizer = processor.tokenizer
            model_class = AutoModelForImageTextToText
        else:
            processor = None
            tokenizer = AutoTokenizer.from_pretrained(config.model, **source)
            model_class = AutoModelForCausalLM
        # Decoder-only batches are padded on the left, so every row's next token is at the end.
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:  # Llama 3 has none; padding is masked out, any token will do
            tokenizer.pad_token = tokenizer.eos_token

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per worker clutters the run's log
        report_log = logging.getLogger("transformers.modeling_utils")
        report_log.addFilter(_drop_load_report)  # what matters in it is checked below
        try:
            # device_map: the weights go straight to the device, without a whole copy in CPU memory first.
            network, info = model_class.from_pretrained(config.model, config=hf_config, dtype=torch_dtype,
                                                        device_map=device, output_loading_info=True, **source)
        finally:
            report_log.removeFilter(_drop_load_report)
        wrong = sorted(info.get("missing_keys") or []) + sorted(info.get("mismatched_keys") or [])
        if wrong:  # random weights where the checkpoint has none would generate noise, silently
            raise ValueError(f"{config.model!r} lacks weights for {type(network).__name__}: {wrong[:5]}")
        # Keep only the checkpoint's token ids: `generate` fills every unset option from the model's
        # generation_config, and its sampling defaults (top_k, repetition_penalty...) are not ours.
        old = network.generation_config
        eos = old.eos_token_id if old.eos_token_id is not None else tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"{config.model!r} names no EOS token (generation_config.json or the tokenizer)")
        first_eos = eos[0] if isinstance(eos, list) else eos
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else first_eos
        network.generation_config = GenerationConfig(bos_token_id=old.bos_token_id, eos_token_id=eos, pad_token_id=pad)
        return cls(config, network.eval(), tokenizer, processor, device, torch_dtype)

    @property
    def batch_size(self) -> int:
        return self.batcher.batch_size

    # ---- generate ------------------------------------------------------------------------------

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if self.network is None:
            raise RuntimeError(f"the engine for {self.model!r} is closed")
        results: list[GenerationResult | None] = [None] * len(requests)
        # A batch holds one kind of input (chat or raw) with one number of frames: processors
        # cannot mix requests with and without media, nor stack videos of different lengths.
        groups: dict[tuple[bool, int], list[_Item]] = {}
        for index, request in enumerate(requests):
            try:  # a request that cannot even be prepared fails alone, before any batch
                item = self._prepare(index, request)
            except Exception as e:
                results[index] = _error(request, e)
                continue
            groups.setdefault((request.messages is None, len(request.frames)), []).append(item)
        for _, items in sorted(groups.items()):
            # Similar lengths together: less padding. Stable, so equal keys keep the caller's order.
            items.sort(key=lambda item: item.length)
            for batch_results in self.batcher.run(items, self._run_batch):
                for item, result in batch_results:
                    results[item.index] = result
        return results

    def _prepare(self, index: int, request: GenerationRequest) -> _Item:
        _check_sampling(request)
        if self.processor is None:
            if request.frames:
                raise ValueError(f"{self.model!r} is a text-only model: it cannot take frames")
            if request.messages is not None:
                # sanitize_control_tokens: a message's text is encoded as text, whatever it contains.
                # The template writes BOS itself where the model wants one, so nothing is added.
                ids = self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True,
                                                         return_dict=True, sanitize_control_tokens=True)["input_ids"]
            else:
                ids = self.tokenizer(request.prompt)["input_ids"]
            return _Item(index, request, ids=list(ids), length=len(ids))
        if request.messages is None:
            return _Item(index, request, length=len(request.prompt))
        conversation = self._conversation(request)
        length = sum(len(part.get("text", "")) for message in conversation for part in message["content"])
        return _Item(index, request, conversation=conversation, length=length)

    def _conversation(self, request: GenerationRequest) -> list[dict]:
        """The messages in the processor's form (content as a list of items), with the frames in
        front of the first user message's content."""
        conversation = []
        for message in request.messages:
            content = message["content"]
            items = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
            if any(part.get("type") in ("image", "video") for part in items):
                raise ValueError("put frames in the request's `frames`, not in its messages")
            conversation.append({**message, "content": items})
        if request.frames:
            users = [message for message in conversation if message["role"] == "user"]
            if not users:
                raise ValueError("frames need a user message to go with")
            frames = list(request.frames)
            media = ([{"type": "video", "video": frames}] if self.as_video
                     else [{"type": "image", "image": frame} for frame in frames])
            users[0]["content"] = media + users[0]["content"]
        return conversation

    def _run_batch(self, batch: list[_Item]) -> list[tuple[_Item, GenerationResult]]:
        """One `generate` call; out-of-memory goes up to the batcher (which halves the batch),
        anything else is retried one request at a time so that it fails only the request at fault."""
        try:
            return list(zip(batch, self._generate(batch)))
        except Exception as e:
            if _is_oom(e) and len(batch) > 1:
                raise
            failure = e
        if len(batch) == 1:
            log.warning("%s: request %s failed: %s", self.model, batch[0].request.id, failure)
            return [(batch[0], _error(batch[0].request, failure))]
        log.warning("%s: a batch of %d failed (%s); retrying its requests one by one", self.model, len(batch), failure)
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        return [pair for item in batch for pair in self._run_batch([item])]

    def _inputs(self, batch: list[_Item]) -> dict[str, torch.Tensor]:
        """Model inputs for a batch, padded on the left."""
        if self.processor is None:
            width = max(len(item.ids) for item in batch)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, item in enumerate(batch):
                input_ids[row, width - len(item.ids):] = torch.tensor(item.ids)
                attention_mask[row, width - len(item.ids):] = 1
            return {"input_ids": input_ids, "attention_mask": attention_mask}
        if batch[0].conversation is not None:
            inputs = self.processor.apply_chat_template(
                [item.conversation for item in batch], add_generation_prompt=True, tokenize=True, return_dict=True,
                return_tensors="pt", sanitize_control_tokens=True, processor_kwargs={"padding": True})
        else:
            frames = [list(item.request.frames) for item in batch]  # all empty or all not: see generate
            media = {}
            if frames[0]:
                media = {"videos": frames} if self.as_video else {"images": frames}
            inputs = self.processor(text=[item.request.prompt for item in batch], padding=True, return_tensors="pt",
                                    **media)
        return dict(inputs)

    @torch.inference_mode()
    def _generate(self, batch: list[_Item]) -> list[GenerationResult]:
        inputs = {key: value.to(self.device) for key, value in self._inputs(batch).items()}
        for key, value in inputs.items():  # pixels in the model's dtype; ids and masks stay integers
            if value.is_floating_point():
                inputs[key] = value.to(self.dtype)
        requests = [item.request for item in batch]
        prompt_length = inputs["input_ids"].shape[1]
        limits = [r.max_tokens for r in requests]
        prompt_counts = inputs["attention_mask"].sum(dim=1).tolist()
        for request, count in zip(requests, prompt_counts):
            # Raised before any compute: the batch is retried one by one, and only this request fails.
            if self.context and count + request.max_tokens > self.context:
                raise ValueError(f"request {request.id}: {count} prompt tokens + max_tokens {request.max_tokens} "
                                 f"exceed the model's context of {self.context} tokens")
        sequences = self.network.generate(
            **inputs,
            do_sample=False,  # _SeededSampler has already chosen the token: greedy search takes it
            max_new_tokens=max(limits),
            logits_processor=LogitsProcessorList([_SeededSampler(requests, self.device)]),
            stopping_criteria=StoppingCriteriaList([_RowLimits(prompt_length, limits, self.device)]),
        )
        new_tokens = sequences[:, prompt_length:].tolist()
        results = []
        for request, tokens, prompt_count in zip(requests, new_tokens, prompt_counts):
            tokens = tokens[: request.max_tokens]  # past its limit a row holds padding
            end = next((i for i, token in enumerate(tokens) if token in self.eos_ids), None)
            if end is None:
                text, reason, count = tokens, "length", len(tokens)
            else:
                text, reason, count = tokens[:end], "stop", end + 1
            results.append(GenerationResult(
                id=request.id, text=self.tokenizer.decode(text, skip_special_tokens=True), finish_reason=reason,
                prompt_tokens=int(prompt_count), output_tokens=count))
        return results

    def close(self) -> None:
        """Free the model (and its accelerator memory); `generate` afterwards is a RuntimeError."""
        self.network = None
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
