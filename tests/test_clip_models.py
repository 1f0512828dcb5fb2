"""The CLIP encoders against transformers' own CLIPModel, on a tiny checkpoint built offline."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from pipeline.models import clip
from pipeline.models.identity import checkpoint_identity
from pipeline.models.tiny import build_tiny_clip


@pytest.fixture(scope="module")
def tiny(tiny_clip) -> str:
    return tiny_clip


@pytest.fixture(scope="module")
def reference(tiny):
    """transformers' CLIPModel with the checkpoint's processor and tokenizer, used directly."""
    model = transformers.CLIPModel.from_pretrained(tiny, dtype=torch.float32).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(tiny, backend="pil")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny)
    return model, processor, tokenizer


def _features(out) -> np.ndarray:
    # get_*_features returns a tensor in transformers 4 and an output object in 5.
    tensor = out if isinstance(out, torch.Tensor) else out.pooler_output
    return tensor.detach().float().numpy()


def _jpeg(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    # Differing sizes and aspect ratios, so resize and centre crop both matter.
    sizes = [(320, 180), (180, 320), (224, 224), (640, 360), (97, 131)]
    return [clip.decode_jpeg(_jpeg(w, h, i)) for i, (w, h) in enumerate(sizes)]


TEXTS = ["a dog runs across a field", "A WOMAN COOKS pasta!", "zebras 42 unknown wörds", "x"]


def test_dims_come_from_the_config(tiny):
    assert clip.embedding_dim(tiny, None) == 16
    assert clip.text_width(tiny, None) == 32


def test_image_embeddings_equal_clipmodel(tiny, reference, frames):
    model, processor, _ = reference
    vision = clip.ClipVision.load(tiny, None, device="cpu", dtype="float32", batch_size=2)
    got = vision.embed(frames)
    with torch.inference_mode():
        want = _features(model.get_image_features(**processor(images=frames, return_tensors="pt")))
    assert got.dtype == np.float32 and got.shape == (len(frames), clip.embedding_dim(tiny, None)) == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert vision.embed([]).shape == (0, vision.dim)
    # The PIL processor whether or not torchvision is installed, so features match across machines.
    assert vision.processor.backend == "pil"
    assert vision.model.config._attn_implementation == "sdpa"


def test_half_precision_is_close_and_returned_as_float32(tiny, frames):
    full = clip.ClipVision.load(tiny, None, device="cpu", dtype="float32").embed(frames)
    half = clip.ClipVision.load(tiny, None, device="cpu", dtype="bfloat16")
    got = half.embed(frames)
    assert half.dtype == torch.bfloat16 and got.dtype == np.float32
    np.testing.assert_allclose(got, full, atol=0.05 * np.abs(full).max())


def test_a_checkpoint_without_the_projection_is_refused(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(tiny, tmp_path / "no-projection")
    weights = load_file(copy / "model.safetensors")
    del weights["visual_projection.weight"]
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="visual_projection"):
        clip.ClipVision.load(str(copy), None, device="cpu")


def test_the_top_level_projection_dim_wins(tiny, tmp_path, frames):
    # Some CLIPModel configs carry a default projection_dim in vision_config that CLIPModel
    # ignores; the tower must use the top-level one, as CLIPModel does.
    import json
    import shutil

    copy = shutil.copytree(tiny, tmp_path / "stale-sub-config")
    config = json.loads((copy / "config.json").read_text())
    config["vision_config"]["projection_dim"] = 512
    (copy / "config.json").write_text(json.dumps(config))
    assert clip.ClipVision.load(str(copy), None, device="cpu").embed(frames[:1]).shape == (1, 16)


def test_text_embeddings_equal_clipmodel(tiny, reference):
    model, _, tokenizer = reference
    text = clip.ClipText.load(tiny, None, device="cpu", dtype="float32", batch_size=3)
    got, truncated = text.embed_with_info(TEXTS)
    with torch.inference_mode():
        want = _features(model.get_text_features(**tokenizer(TEXTS, padding=True, return_tensors="pt")))
    assert got.shape == (len(TEXTS), text.dim) == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert truncated == [False] * len(TEXTS)


def test_long_text_is_truncated_and_reported(tiny):
    text = clip.ClipText.load(tiny, None, device="cpu", dtype="float32")
    long = " ".join(["a man is playing a guitar on a stage"] * 20)
    out = text.encode(["a short caption", long], tokens=True)
    assert out.truncated == [False, True]
    assert out.tokens[1].shape == (77, text.width)
    np.testing.assert_allclose(out.embeds, text.embed(["a short caption", long]), rtol=1e-6, atol=1e-6)


def test_truncation_starts_one_token_past_the_context(tiny):
    text = clip.ClipText.load(tiny, None, device="cpu", dtype="float32")
    fits, cut = " ".join(["a"] * 75), " ".join(["a"] * 76)  # one token each, plus start and end
    assert len(text.tokenizer(fits)["input_ids"]) == 77
    assert text.embed_with_info([fits, cut])[1] == [False, True]


def test_token_features_keep_only_real_tokens(tiny, reference):
    _, _, tokenizer = reference
    text = clip.ClipText.load(tiny, None, device="cpu", dtype="float32")
    features = text.token_features(TEXTS)
    counts = [len(ids) for ids in tokenizer(TEXTS)["input_ids"]]
    assert [f.shape for f in features] == [(n, text.width) for n in counts]
    # Padding must not change a text's tokens (CLIP's text attention is causal).
    alone = text.token_features([TEXTS[3]])[0]
    np.testing.assert_allclose(features[3], alone, rtol=1e-5, atol=1e-5)


def test_out_of_memory_halves_the_batch(tiny, frames, monkeypatch, caplog):
    vision = clip.ClipVision.load(tiny, None, device="cpu", dtype="float32", batch_size=8)
    want = vision.embed(frames)
    forward = vision.model.forward
    seen = []

    def small_batches_only(*args, pixel_values, **kwargs):
        seen.append(len(pixel_values))
        if len(pixel_values) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(*args, pixel_values=pixel_values, **kwargs)

    monkeypatch.setattr(vision.model, "forward", small_batches_only)
    with caplog.at_level(logging.WARNING, logger=clip.__name__):
        got = vision.embed(frames)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert vision.batch_size == 2 and seen == [5, 2, 2, 1]
    assert "retrying with 2" in caplog.text

    seen.clear()
    vision.embed(frames)
    assert seen == [2, 2, 1]  # the reduced size is kept


def test_other_errors_and_a_batch_of_one_are_raised(tiny, frames, monkeypatch):
    vision = clip.ClipVision.load(tiny, None, device="cpu", dtype="float32", batch_size=4)

    def always_oom(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(vision.model, "forward", always_oom)
    with pytest.raises(RuntimeError, match="out of memory"):
        vision.embed(frames)
    assert vision.batch_size == 1

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    vision.batcher.batch_size = 4
    monkeypatch.setattr(vision.model, "forward", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        vision.embed(frames)
    assert vision.batch_size == 4


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_jpeg(64, 48, 0)[:-200], id="truncated"),
        pytest.param(_jpeg(64, 48, 0)[:100], id="header-only"),
        pytest.param(_png(), id="png"),
        pytest.param(b"not a jpeg at all", id="garbage"),
        pytest.param(b"", id="empty"),
    ],
)
def test_corrupt_jpegs_are_named(data):
    with pytest.raises(ValueError, match="corrupt JPEG"):
        clip.decode_jpeg(data)


def test_truncation_is_found_even_if_pil_is_told_to_allow_it(monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ValueError, match="corrupt JPEG"):
        clip.decode_jpeg(_jpeg(64, 48, 0)[:-200])


def test_decode_jpeg_is_rgb_uint8():
    frame = clip.decode_jpeg(_jpeg(64, 48, 0))
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8


def test_build_is_reproducible_and_idempotent(tiny, tmp_path):
    from safetensors.numpy import load_file

    again = build_tiny_clip(tmp_path / "again")
    first, second = load_file(f"{tiny}/model.safetensors"), load_file(f"{again}/model.safetensors")
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    # Everything else too (configs, tokenizer): the whole build is one fixed checkpoint.
    assert checkpoint_identity(again, None)["sha256"] == checkpoint_identity(tiny, None)["sha256"]
    assert build_tiny_clip(again) == again


def test_identity_follows_local_files(tiny, tmp_path):
    import shutil

    copy = shutil.copytree(tiny, tmp_path / "copy")
    before = checkpoint_identity(str(copy), None)
    assert before["transformers"] == transformers.__version__ and before["revision"] is None
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("16", "17", 1))
    assert checkpoint_identity(str(copy), None)["sha256"] != before["sha256"]
    # A Hub id is named by its revision alone; nothing is fetched to say so.
    assert checkpoint_identity("openai/clip-vit-base-patch32", "3d74acf") == {
        "model": "openai/clip-vit-base-patch32", "revision": "3d74acf", "transformers": transformers.__version__}


def test_devices_and_dtypes():
    assert clip.resolve_device("cpu") == "cpu"
    assert clip.resolve_dtype("auto", "cpu") == torch.float32
    assert clip.resolve_dtype("auto", "cuda:0") == torch.float16
    assert clip.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        clip.resolve_dtype("float8", "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        clip.resolve_device("tpu")
    if not torch.cuda.is_available():
        assert clip.resolve_device("auto") == "cpu"
        with pytest.raises(ValueError, match="CUDA is not available"):
            clip.resolve_device("cuda:0")


def test_a_hub_id_records_the_commit_its_config_came_from(tmp_path, tiny):
    # A hub cache laid out as huggingface_hub writes it, read offline in a fresh process (the hub
    # library reads its cache location and offline switch once, at import).
    import shutil
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny, repo / "snapshots" / commit)
    code = ("from pipeline.models.identity import checkpoint_identity as c; "
            "print(c('someone/tiny-clip', None)['commit'])")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == commit


def test_a_model_that_is_nowhere_is_a_one_line_error_naming_it():
    from pipeline.config import ConfigError

    # The test session runs offline: a hub id not in the cache cannot be read.
    for call in (lambda: checkpoint_identity("nobody/no-such-clip", None),
                 lambda: clip.embedding_dim("nobody/no-such-clip", "abc")):
        with pytest.raises(ConfigError, match=r"model 'nobody/no-such-clip'.* is not a local folder"):
            call()
