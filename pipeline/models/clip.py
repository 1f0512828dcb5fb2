"""CLIP image and text encoders for the `frame_features` and `text_features` stages.

    dim = embedding_dim("openai/clip-vit-base-patch32", revision=None)     # driver: config only
    vision = ClipVision.load("openai/clip-vit-base-patch32", None, device="auto", dtype="auto")
    feats = vision.embed([decode_jpeg(b) for b in jpegs])                  # float32 [n, dim]
    text = ClipText.load("openai/clip-vit-base-patch32", None)
    out = text.encode(["a dog runs"], tokens=True)                          # embeds, truncated, tokens

Promises: the embeddings are the checkpoint's projected `image_embeds` / `text_embeds` (not
normalised), computed from the checkpoint's own image processor and tokenizer, so they equal
`CLIPModel.get_image_features` / `get_text_features` on the same inputs. A batch that runs out of
accelerator memory is halved and retried (down to one item) and the smaller size is kept.
`trust_remote_code` is never passed: CLIP is native to transformers.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from functools import cache
from typing import Callable, TypeVar

import numpy as np
import torch
from PIL import Image

from pipeline.models.identity import model_unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Files of a local checkpoint folder that change what it computes (weights, configs, tokenizer).


# ---- device, dtype, config ---------------------------------------------------------------------


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when CUDA is available, else 'cpu'; 'cpu', 'cuda' and 'cuda:N' as given.
    A CUDA device that is not there is a ValueError, not a silent fallback to the CPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available on this machine")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
        return name
    raise ValueError(f"unknown device {name!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """'float32', 'float16', 'bfloat16', or 'auto': float16 on CUDA, float32 on the CPU (where
    half precision is slow and less exact)."""
    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}: expected one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def use_cpu_threads(device: str, num_cpus: float) -> None:
    """On the CPU, as many torch threads as CPUs the worker was given (Ray schedules by them)."""
    if device == "cpu":
        torch.set_num_threads(max(1, int(num_cpus)))


def _clip_config(model: str, revision: str | None):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model, revision=revision)
    except OSError as error:
        raise model_unavailable(model, revision, error) from error
    if not hasattr(config, "projection_dim") or not hasattr(config, "vision_config"):
        raise ValueError(f"{model!r} is not a CLIP checkpoint (its config is {type(config).__name__})")
    return config


@cache  # the driver asks for the schema and the provenance of a run: read the config once
def embedding_dim(model: str, revision: str | None) -> int:
    """The width of the projected image and text embeddings, read from the config alone (no
    weights), so the driver can declare the output schema."""
    return int(_clip_config(model, revision).projection_dim)


@cache
def text_width(model: str, revision: str | None) -> int:
    """The text tower's hidden size: the width of `ClipText.token_features` rows."""
    return int(_clip_config(model, revision).text_config.hidden_size)


# ---- images ------------------------------------------------------------------------------------


def decode_jpeg(data: bytes) -> np.ndarray:
    """RGB uint8 [height, width, 3]. Anything that is not a whole, decodable JPEG (garbage,
    another format, a truncated file) is `ValueError("corrupt JPEG: ...")`."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise ValueError(f"not a JPEG but {image.format}")
            # A JPEG ends with the EOI marker. PIL finds most truncations itself (its
            # ImageFile.LOAD_TRUNCATED_IMAGES is False by default), but not if some library has
            # set that flag, and then it pads a cut-off image with grey: check the marker too.
            if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
                raise ValueError(f"no end-of-image marker, truncated after {len(data)} bytes")
            # Inside the try: Image.open reads only the header, decoding errors come from here.
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"corrupt JPEG: {e}") from e


# ---- batching with out-of-memory back-off ------------------------------------------------------


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


@dataclass
class _Batcher:
    """Runs a function over slices of `batch_size` items; on out-of-memory halves the size and
    retries the same slice, down to one item, then re-raises. The reduced size is kept."""

    batch_size: int
    name: str

    def run(self, items: list, fn: Callable[[list], T]) -> list[T]:
        results, start = [], 0
        while start < len(items):
            batch = items[start : start + self.batch_size]
            try:
                results.append(fn(batch))
                start += len(batch)
                continue
            except Exception as e:
                if not _is_oom(e) or len(batch) == 1:
                    raise
            # Out of the except block, so the failed batch's tensors (held by the traceback) are
            # freed before the cache is emptied.
            self.batch_size = len(batch) // 2
            log.warning("%s: out of memory on a batch of %d, retrying with %d", self.name, len(batch),
                        self.batch_size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return results


# ---- the encoders ------------------------------------------------------------------------------


def _drop_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in record.getMessage()


def _load_tower(cls, part: str, model: str, revision: str | None, device: str, dtype: str):
    """(tower, the checkpoint's CLIP config, device, torch dtype): the `part` ("vision_config" or
    "text_config") of a CLIP checkpoint as `cls`, in eval mode on the resolved device."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    config = _clip_config(model, revision)
    # The tower's own config inside a CLIPModel checkpoint may carry a stale projection_dim (the
    # top-level one is what CLIPModel uses), so build the tower from the sub-config with it set.
    sub_config = getattr(config, part)
    sub_config.projection_dim = config.projection_dim
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per worker would clutter the run's log
    # transformers logs a warning table of every checkpoint weight the tower does not use (the
    # other tower's, here: expected); what matters, missing or misshapen weights, is checked below.
    # (A filter, not a level: transformers 5 runs extra checks when that logger's level is raised.)
    report_log = logging.getLogger("transformers.modeling_utils")
    report_log.addFilter(_drop_load_report)
    try:
        tower, info = cls.from_pretrained(model, revision=revision, config=sub_config, dtype=torch_dtype,
                                          attn_implementation="sdpa", output_loading_info=True)
    finally:
        report_log.removeFilter(_drop_load_report)
    wrong = sorted(info.get("missing_keys") or []) + sorted(info.get("mismatched_keys") or [])
    if wrong:  # random weights where the checkpoint has none would be silently wrong features
        raise ValueError(f"{model!r} lacks weights for {cls.__name__}: {wrong[:5]}")
    return tower.to(device).eval(), config, device, torch_dtype


@dataclass
class ClipVision:
    """The CLIP vision tower with its projection and the checkpoint's image processor. Load once
    per worker; `embed` maps RGB frames to projected image embeddings."""

    model: torch.nn.Module
    processor: object
    dim: int
    model_id: str
    revision: str | None
    device: str
    dtype: torch.dtype
    batcher: _Batcher

    @classmethod
    def load(cls, model: str, revision: str | None = None, device: str = "auto", dtype: str = "auto",
             batch_size: int = 64) -> ClipVision:
        from transformers import CLIPVisionModelWithProjection

        tower, config, device, torch_dtype = _load_tower(CLIPVisionModelWithProjection, "vision_config", model,
                                                         revision, device, dtype)
        # The PIL backend: numerically the preprocessing CLIP was trained with (PIL bicubic resize),
        # and the same on every machine, whether or not torchvision is installed there.
        processor = load_image_processor(model, revision)
        return cls(tower, processor, int(config.projection_dim), model, revision, device, torch_dtype,
                   _Batcher(batch_size, f"ClipVision({model})"))

    @property
    def batch_size(self) -> int:
        return self.batcher.batch_size

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """float32 [len(images), dim]: projected image embeddings of RGB uint8 HWC frames."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(self.batcher.run(list(images), self._embed_batch))

    def embed_prepared(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [n, dim] from `FramePreparer.prepare`'s uint8 [n, 3, H, W]: the processor's
        rescale and normalisation, then the model, on this tower's device."""
        if not len(pixels):
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(self.batcher.run(pixels, self._embed_prepared_batch))

    @torch.inference_mode()
    def _embed_prepared_batch(self, pixels: np.ndarray) -> np.ndarray:
        p = self.processor
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device).float()
        if p.do_rescale:
            x = x * p.rescale_factor
        if p.do_normalize:
            mean = torch.tensor(p.image_mean, device=self.device).view(1, -1, 1, 1)
            std = torch.tensor(p.image_std, device=self.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return self.model(pixel_values=x.to(self.dtype)).image_embeds.float().cpu().numpy()

    @torch.inference_mode()
    def _embed_batch(self, images: list[np.ndarray]) -> np.ndarray:
        pixels = self.processor(images=images, return_tensors="pt", input_data_format="channels_last")
        pixel_values = pixels["pixel_values"].to(self.device, self.dtype)
        return self.model(pixel_values=pixel_values).image_embeds.float().cpu().numpy()


def load_image_processor(model: str, revision: str | None):
    """The checkpoint's own image processor, PIL backend: the same output with or without
    torchvision, and the bicubic resize CLIP was trained with."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model, revision=revision, backend="pil")


@dataclass
class FramePreparer:
    """The CPU half of the checkpoint's image processor (resize, centre crop), for workers that
    feed a GPU: its uint8 output is a quarter the size of float pixels, and `ClipVision.
    embed_prepared` does the rest (rescale, normalise) beside the model."""

    processor: object

    @classmethod
    def load(cls, model: str, revision: str | None = None) -> FramePreparer:
        return cls(load_image_processor(model, revision))

    def prepare(self, images: list[np.ndarray]) -> np.ndarray:
        """uint8 [n, 3, H, W] from RGB uint8 HWC frames."""
        if not images:
            size = self.processor.crop_size
            return np.zeros((0, 3, size["height"], size["width"]), np.uint8)
        out = self.processor(images=images, do_rescale=False, do_normalize=False, return_tensors="np",
                             input_data_format="channels_last")["pixel_values"]
        # PIL resizes and crops uint8 images, so the values are whole numbers already.
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@dataclass
class TextFeatures:
    """`embeds`: float32 [n, dim] projected text embeddings. `truncated[i]`: text i was longer
    than the model's context and was cut (the stage must flag it). `tokens[i]`: float32
    [n_tokens_i, text_width] last hidden states of its real tokens (start and end included), when
    asked for."""

    embeds: np.ndarray
    truncated: list[bool]
    tokens: list[np.ndarray] | None = None


@dataclass
class ClipText:
    """The CLIP text tower with its projection and the checkpoint's tokenizer. Load once per
    worker; texts longer than the context (77 tokens for CLIP) are truncated and reported."""

    model: torch.nn.Module
    tokenizer: object
    dim: int
    width: int
    max_length: int
    model_id: str
    revision: str | None
    device: str
    dtype: torch.dtype
    batcher: _Batcher

    @classmethod
    def load(cls, model: str, revision: str | None = None, device: str = "auto", dtype: str = "auto",
             batch_size: int = 256) -> ClipText:
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        tower, config, device, torch_dtype = _load_tower(CLIPTextModelWithProjection, "text_config", model,
                                                         revision, device, dtype)
        tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
        max_length = min(tokenizer.model_max_length, config.text_config.max_position_embeddings)
        return cls(tower, tokenizer, int(config.projection_dim), int(config.text_config.hidden_size), max_length,
                   model, revision, device, torch_dtype, _Batcher(batch_size, f"ClipText({model})"))

    @property
    def batch_size(self) -> int:
        return self.batcher.batch_size

    def encode(self, texts: list[str], tokens: bool = False) -> TextFeatures:
        """Embeddings and truncation flags of `texts`, plus per-token features if `tokens`."""
        parts = self.batcher.run(list(texts), lambda batch: self._encode_batch(batch, tokens))
        embeds = np.concatenate([p.embeds for p in parts]) if parts else np.zeros((0, self.dim), np.float32)
        return TextFeatures(embeds, [t for p in parts for t in p.truncated],
                            [x for p in parts for x in p.tokens] if tokens else None)

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), dim] projected text embeddings."""
        return self.encode(texts).embeds

    def embed_with_info(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        """(embeddings, truncated flags)."""
        out = self.encode(texts)
        return out.embeds, out.truncated

    def token_features(self, texts: list[str]) -> list[np.ndarray]:
        """Per text, float32 [n_tokens, width]: the last hidden state of its real tokens (start and end
        included, padding not); a text past the context is cut as in `encode`, which also says so."""
        return self.encode(texts, tokens=True).tokens

    @torch.inference_mode()
    def _encode_batch(self, texts: list[str], tokens: bool) -> TextFeatures:
        # One token over the limit is enough to tell a text that would be cut from one that fits.
        probe = self.tokenizer(texts, truncation=True, max_length=self.max_length + 1)
        lengths = [len(ids) for ids in probe["input_ids"]]
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        per_token = None
        if tokens:
            hidden = out.last_hidden_state.float().cpu()
            mask = batch["attention_mask"].bool().cpu()
            per_token = [hidden[i][mask[i]].numpy() for i in range(len(texts))]
        return TextFeatures(out.text_embeds.float().cpu().numpy(), [n > self.max_length for n in lengths], per_token)
