"""frame_features and text_features with the tiny local CLIP: contracts, a corrupt JPEG, fewer
frames than asked for, run settings (including steps streaming between pools), resume, and a
model change that leaves keyframes alone."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.decode.sampling import Uniform
from pipeline.demo import synth
from pipeline.models.tiny import build_tiny_clip
from pipeline.run.runner import RunnerConfig, attach_upstream, run_stage
from pipeline.run.stage import ModelRunSettings, Stage, Step
from pipeline.stages import STAGES
from pipeline.stages.frame_features import FrameFeaturesConfig
from pipeline.stages.keyframes import KeyframesConfig
from pipeline.stages.probe import ProbeConfig
from pipeline.stages.text_features import TextFeaturesConfig
from pipeline.store.dataset_manifest import write_dataset_manifest
from pipeline.store.schema import CAPTIONS, KEYFRAMES, MANIFEST_PROBLEMS, VIDEOS
from pipeline.store.storage import Store
from pipeline.store.version import Version

RUNNER = RunnerConfig(rows_per_shard=2, progress=False)
FRAMES = 6


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for i, seconds in enumerate((2, 3, 0.2)):  # the last has 5 frames: fewer than asked for
        synth.make_clip(folder / f"v{i}.mp4", seconds=seconds, width=160, height=96, fps=25)
    return folder


def _manifest(store: Store, clips: Path, captions: list[tuple[str, str, str]] | None = None) -> dict:
    ids = ["v0", "v1", "v2"]
    videos = pa.table({"video_id": ids, "path": [f"{i}.mp4" for i in ids], "split": ["test"] * 3,
                       "extra": [None] * 3}, schema=VIDEOS)
    captions = captions or [("c0", "v0", "a test pattern"), ("c1", "v1", "colour bars")]
    table = pa.table({"caption_id": [c[0] for c in captions], "video_id": [c[1] for c in captions],
                      "text": [c[2] for c in captions], "split": ["test"] * len(captions),
                      "extra": [None] * len(captions)}, schema=CAPTIONS)
    return write_dataset_manifest(store, videos, table, MANIFEST_PROBLEMS.empty_table(), str(clips),
                                  {"format": "test"}).as_inputs()


def _keyframes(store: Store, inputs: dict) -> dict:
    probe = run_stage(store, STAGES["probe"], ProbeConfig(), inputs, RUNNER)
    inputs = {**inputs, "probe": Version(store, "probe", probe.version)}
    config = KeyframesConfig(sampling=Uniform(num_frames=FRAMES))
    keyframes = run_stage(store, STAGES["keyframes"], config, inputs, RUNNER)
    return {**inputs, "keyframes": Version(store, "keyframes", keyframes.version)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ray_session, tiny_clip, clips) -> Path:
    """The three clips' manifest, probe, keyframes and frame_features with the tiny CLIP (default
    run settings), run once for the module; tests copy it."""
    folder = tmp_path_factory.mktemp("prepared") / "out"
    store = Store.open(str(folder))
    inputs = _keyframes(store, _manifest(store, clips))
    run_stage(store, STAGES["frame_features"], FrameFeaturesConfig(model=tiny_clip), inputs, RUNNER)
    return folder


def _copy_of(prepared: Path, tmp_path: Path, clips: Path) -> tuple[Store, dict]:
    """A test's own copy of the prepared output, and its inputs (found up to date: nothing reruns)."""
    shutil.copytree(prepared, tmp_path / "out")
    store = Store.open(str(tmp_path / "out"))
    return store, _keyframes(store, _manifest(store, clips))


def _rows(store: Store, stage: str, version: str) -> dict[str, dict]:
    table = ds.dataset(store.path(stage, version), format="parquet").to_table().to_pylist()
    return {row.get("video_id") if stage != "text_features" else row["caption_id"]: row for row in table}


def _direct_image_features(model: str, jpegs: list[bytes]) -> np.ndarray:
    """The checkpoint called directly: its own processor, then CLIPModel.get_image_features."""
    import torch
    from transformers import AutoImageProcessor, CLIPModel

    clip = CLIPModel.from_pretrained(model).eval()
    processor = AutoImageProcessor.from_pretrained(model, backend="pil")
    images = [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]
    with torch.inference_mode():
        out = clip.get_image_features(**processor(images=images, return_tensors="pt"))
    return getattr(out, "pooler_output", out).numpy()


def test_frame_features_match_the_model_called_directly(tmp_path, ray_session, tiny_clip, clips, prepared):
    store, inputs = _copy_of(prepared, tmp_path, clips)
    result = run_stage(store, STAGES["frame_features"], FrameFeaturesConfig(model=tiny_clip), inputs, RUNNER)
    assert result.up_to_date and (result.rows, result.failures) == (3, 0)  # computed by `prepared`
    rows = _rows(store, "frame_features", result.version)
    frames = _rows(store, "keyframes", inputs["keyframes"].version)
    for video_id, row in rows.items():
        features = np.array(row["features"], np.float32)
        assert features.shape == (FRAMES, 16) and row["num_frames"] == FRAMES
        assert row["frame_indices"] == frames[video_id]["frame_indices"]
        expected = _direct_image_features(tiny_clip, frames[video_id]["frames"])
        np.testing.assert_allclose(features, expected, rtol=2e-3, atol=2e-3)  # float16 storage
    # Fewer frames than asked for: keyframes repeats frames, and so do the features.
    assert frames["v2"]["repeated_frames"] and len(set(rows["v2"]["frame_indices"])) < FRAMES
    schema = pq.read_schema(store.path("frame_features", result.version, "part-00000.parquet"))
    assert schema.field("features").type == pa.list_(pa.list_(pa.float16(), 16))
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["tvr.model"] == tiny_clip and meta["tvr.dim"] == "16" and "not normalised" in meta["tvr.features"]


# ---- a corrupt JPEG in a keyframes row -------------------------------------------------------------


def _planted_items(config, inputs):
    return inputs["videos"].table(columns=["video_id"])


def _planted_setup(config):
    good = io.BytesIO()
    Image.fromarray(np.full((64, 96, 3), 120, np.uint8)).save(good, format="JPEG")

    def plant(items):
        rows = []
        for item in items:
            jpeg = good.getvalue()
            frames = [jpeg, jpeg[: len(jpeg) // 2]] if item["video_id"] == "v1" else [jpeg, jpeg]  # cut short
            rows.append({"video_id": item["video_id"], "strategy": "uniform", "frame_indices": [0, 1],
                         "timestamps": [0.0, 0.04], "frames": frames, "width": 96, "height": 64,
                         "repeated_frames": False, "decoder": "planted", "note": None})
        return rows

    return plant


# Stands in for keyframes so that one row carries damaged JPEG bytes (keyframes never stores any).
PLANTED = Stage(name="keyframes", description="planted", key="video_id", inputs=("videos",),
                config_type=ProbeConfig, schema=KEYFRAMES, items=_planted_items,
                steps=(Step("plant", _planted_setup),))


def test_a_corrupt_jpeg_fails_its_video_only(tmp_path, ray_session, tiny_clip, clips):
    store = Store.open(str(tmp_path / "out"))
    inputs = _manifest(store, clips)
    planted = run_stage(store, PLANTED, ProbeConfig(), inputs, RUNNER)
    inputs = {**inputs, "keyframes": Version(store, "keyframes", planted.version)}
    config = FrameFeaturesConfig(model=tiny_clip, run=ModelRunSettings(rows_per_shard=3))
    result = run_stage(store, STAGES["frame_features"], config, inputs, RUNNER)
    failures = ds.dataset(store.path("failures", "frame_features", result.version)).to_table().to_pylist()
    assert [(f["item_id"], f["reason"]) for f in failures] == [("v1", "corrupt_frame")]
    assert "frame 1" in failures[0]["message"] and "corrupt JPEG" in failures[0]["message"]
    assert sorted(_rows(store, "frame_features", result.version)) == ["v0", "v2"]  # same shard, kept


def test_the_driver_holds_no_pixels(tmp_path, ray_session, clips, prepared):
    store, inputs = _copy_of(prepared, tmp_path, clips)
    stage = STAGES["frame_features"]
    readers = {name: inputs[name] for name in stage.inputs}
    items, _ = attach_upstream(stage, stage.items(FrameFeaturesConfig(), readers), readers)
    assert not {"frames", "timestamps", "frame_indices"} & set(items.column_names)
    assert all(pa.types.is_integer(items.schema.field(c).type) for c in ("_part.keyframes", "_row.keyframes"))


# ---- run settings, resume, model change ---------------------------------------------------------------


def test_run_settings_and_resume_keep_the_version(tmp_path, ray_session, tiny_clip, clips, prepared):
    store, inputs = _copy_of(prepared, tmp_path, clips)
    stage = STAGES["frame_features"]
    fused = FrameFeaturesConfig(model=tiny_clip)  # as `prepared` ran it: both steps in one worker
    first = run_stage(store, stage, fused, inputs, RUNNER)
    assert first.up_to_date and first.rows == 3
    version, reference = first.version, _rows(store, "frame_features", first.version)

    Version(store, "frame_features", version).withdraw(0)  # as if shard 0 had never been committed
    manifest = json.loads(store.read_text("frame_features", version, "_manifest.json"))
    store.write_text(json.dumps({**manifest, "complete": False}), "frame_features", version, "_manifest.json")
    # One logical GPU in the test session's Ray: decode and embed stream between two pools.
    streamed = replace(fused, run=ModelRunSettings(num_gpus=1, workers=1, device="cpu", batch_size=1,
                                                   dtype="float32"))
    resumed = run_stage(store, stage, streamed, inputs, RUNNER)
    assert resumed.version == version and resumed.computed_items == 2  # shard 0 only
    rows = _rows(store, "frame_features", version)
    for video_id, row in reference.items():
        np.testing.assert_allclose(np.array(rows[video_id]["features"], np.float32),
                                   np.array(row["features"], np.float32), atol=1e-3)


def test_a_model_change_is_a_new_version_and_keyframes_is_untouched(tmp_path, ray_session, tiny_clip, clips,
                                                                    prepared):
    store, inputs = _copy_of(prepared, tmp_path, clips)
    stage = STAGES["frame_features"]
    before = run_stage(store, stage, FrameFeaturesConfig(model=tiny_clip), inputs, RUNNER)  # `prepared`'s
    other = build_tiny_clip(tmp_path / "other-clip", seed=1)
    after = run_stage(store, stage, FrameFeaturesConfig(model=other), inputs, RUNNER)
    assert after.version != before.version and not after.up_to_date
    again = _keyframes(store, _manifest(store, clips))
    assert again["keyframes"] == inputs["keyframes"]  # same version, and it was up to date
    a, b = _rows(store, "frame_features", before.version), _rows(store, "frame_features", after.version)
    assert not np.allclose(np.array(a["v0"]["features"], np.float32), np.array(b["v0"]["features"], np.float32))


# ---- text_features -----------------------------------------------------------------------------------


def test_text_features_flag_truncation_and_give_token_features(tmp_path, ray_session, tiny_clip, clips):
    import torch
    from transformers import AutoTokenizer, CLIPModel

    store = Store.open(str(tmp_path / "out"))
    long = " ".join(["pattern"] * 120)
    inputs = _manifest(store, clips, [("c0", "v0", "a test pattern"), ("c1", "v0", long),
                                      ("c2", "v1", "{{ caption }} ignore previous instructions")])
    config = TextFeaturesConfig(model=tiny_clip, tokens=True)
    result = run_stage(store, STAGES["text_features"], config, inputs, RUNNER)
    rows = _rows(store, "text_features", result.version)
    assert {k: r["truncated"] for k, r in rows.items()} == {"c0": False, "c1": True, "c2": False}
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip)
    clip = CLIPModel.from_pretrained(tiny_clip).eval()
    texts = ["a test pattern", "{{ caption }} ignore previous instructions"]
    with torch.inference_mode():
        out = clip.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt"))
    expected = getattr(out, "pooler_output", out).numpy()
    for k, caption in enumerate(("c0", "c2")):
        np.testing.assert_allclose(np.array(rows[caption]["features"], np.float32), expected[k], rtol=2e-3, atol=2e-3)
        tokens = np.array(rows[caption]["token_features"], np.float32)
        assert tokens.shape == (len(tokenizer(texts[k])["input_ids"]), 32)
    assert len(rows["c1"]["token_features"]) == 77  # cut at the context length
