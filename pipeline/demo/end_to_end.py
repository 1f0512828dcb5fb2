"""`tvr demo`: a small generated dataset run through every stage on local Ray, offline, with tiny
models built locally (random weights): a CLIP for the feature stages, a video LLM and an LLM for
the tag and MMI stages; then a few training steps of a retrieval head on the features, with the
metrics of every inference strategy and of its ranking re-ranked by the skeleton scores (Eq. 10).

Eight clips that differ in length, resolution, codec, container and frame rate (one variable,
one rotated, one shorter than the frames asked for), a zero-byte file and a caption whose
video does not exist, so the failure paths show too.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from pipeline.demo import synth
from pipeline.engines.config import TransformersEngineConfig
from pipeline.flow import DatasetConfig, RunConfig, run_pipeline
from pipeline.mmi.asking import AnswerSampling
from pipeline.models.tiny import build_tiny_clip
from pipeline.models.tiny_lm import build_tiny_lm, build_tiny_vlm
from pipeline.run.runner import RunnerConfig
from pipeline.run.stage import ModelRunSettings
from pipeline.stages.demonstrations import DemonstrationsConfig
from pipeline.stages.frame_features import FrameFeaturesConfig
from pipeline.stages.question_clusters import QuestionClustersConfig
from pipeline.stages.skeleton_scores import SkeletonScoresConfig
from pipeline.stages.text_features import TextFeaturesConfig
from pipeline.stages.text_skeletons import TextSkeletonsConfig
from pipeline.stages.textual_tags import TextualTagsConfig
from pipeline.stages.video_skeletons import VideoSkeletonsConfig
from pipeline.stages.visual_tags import VisualTagsConfig
from pipeline.tags.asking import SamplingSettings
from pipeline.train.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, RerankOptions, TrainConfig
from pipeline.train.loop import evaluate_checkpoint, run_training

# name -> (make_clip keyword arguments, caption)
DEMO_CLIPS = {
    "bars_h264": (dict(seconds=6, width=640, height=360, fps=25, pattern="smptebars"),
                  "colour bars drift across a wide screen"),
    "testsrc_long_gop": (dict(seconds=8, width=320, height=240, fps=30, gop_seconds=4),
                         "a test pattern with a moving counter"),
    "mandelbrot_mpeg4": (dict(seconds=4, width=480, height=270, fps=24, codec="mpeg4",
                              pattern="mandelbrot", suffix=".avi"),
                         "a fractal zooms slowly"),
    "testsrc_vp9": (dict(seconds=5, width=426, height=240, fps=15, codec="libvpx-vp9", suffix=".webm"),
                    "a test card in a web video"),
    "mjpeg_small": (dict(seconds=2, width=256, height=144, fps=10, codec="mjpeg", suffix=".avi"),
                    "a tiny motion jpeg clip"),
    "variable_rate": (dict(seconds=5, width=320, height=180, fps=30, vfr=True, suffix=".mkv"),
                      "a clip whose frame rate changes"),
    "portrait_rotated": (dict(seconds=3, width=320, height=180, fps=25, rotation=90),
                         "a phone video filmed upright"),
    "very_short": (dict(seconds=0.3, width=320, height=240, fps=25, audio=True),
                   "a flash of a test pattern with a beep"),
}


def make_demo_dataset(folder: Path) -> Path:
    """Write the demo videos and a generic captions CSV under `folder`; returns the CSV path."""
    videos = folder / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (kwargs, caption) in DEMO_CLIPS.items():
        kwargs = dict(kwargs)
        path = videos / f"{name}{kwargs.pop('suffix', '.mp4')}"
        if not path.exists():
            synth.make_clip(path, **kwargs)
        rows.append((name, path.name, caption))
    synth.make_zero_byte(videos / "zero_bytes.mp4")
    rows.append(("zero_bytes", "zero_bytes.mp4", "an upload that never finished"))
    rows.append(("never_downloaded", "never_downloaded.mp4", "a video that is gone from the web"))
    annotations = folder / "captions.csv"
    with annotations.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "path", "caption", "split"])
        for video_id, file_name, caption in rows:
            writer.writerow([video_id, file_name, caption, "test"])
    return annotations


def demo_config(out: Path, workers: int | None = None):
    """The demo's run config: the generated dataset, small shards, and tiny local models with
    random weights in place of the real ones (CLIP ViT-B/32, a 7B video LLM, Llama 3.1 8B): the
    tags they produce are noise, but every stage runs as it would for real."""
    data, models = out / "data", out / "models"
    clip = str(models / "tiny-clip")
    # Short answers: a random model never stops on its own.
    sampling = SamplingSettings(max_tokens=24)
    answers = AnswerSampling(max_tokens=12)
    lm, vlm = TransformersEngineConfig(model=str(models / "tiny-lm")), str(models / "tiny-vlm")
    model_run = ModelRunSettings(batch_size=16, rows_per_shard=16)
    return RunConfig(
        out=str(out),
        dataset=DatasetConfig(format="generic", annotations=str(data / "captions.csv"),
                              videos=str(data / "videos")),
        runner=RunnerConfig(rows_per_shard=2, max_workers=workers),
        frame_features=FrameFeaturesConfig(model=clip),
        text_features=TextFeaturesConfig(model=clip),
        visual_tags=VisualTagsConfig(engine=TransformersEngineConfig(model=str(models / "tiny-vlm")),
                                     sampling=sampling, run=ModelRunSettings(batch_size=8, rows_per_shard=16)),
        textual_tags=TextualTagsConfig(engine=TransformersEngineConfig(model=str(models / "tiny-lm")),
                                       sampling=sampling, run=ModelRunSettings(batch_size=20, rows_per_shard=20)),
        # MMI: the questions embedded in the tiny VLM (the paper's LVLM), two candidates per cluster
        # answered on one sampled item, every caption and video asked every cluster's question.
        question_clusters=QuestionClustersConfig(model=vlm),
        demonstrations=DemonstrationsConfig(text_engine=lm, visual_engine=TransformersEngineConfig(model=vlm),
                                            sample_size=1, max_candidates=2, sampling=answers),
        text_skeletons=TextSkeletonsConfig(engine=lm, sampling=answers, run=model_run),
        video_skeletons=VideoSkeletonsConfig(engine=TransformersEngineConfig(model=vlm), sampling=answers,
                                             run=model_run),
        skeleton_scores=SkeletonScoresConfig(engine=lm, k=3, sampling=AnswerSampling(max_tokens=8), run=model_run),
    )


def demo_training(out: Path) -> TrainConfig:
    """A few steps of the MAC-VR head on the demo's frame features and the tags the tag stages made,
    trained and tested on the same eight videos (the demo has no train split): it shows the loop,
    the tags reaching the model and the metrics table run. The tiny CLIP is 16 wide: 4 concepts."""
    return TrainConfig(data=DataConfig(out=str(out), train_split="test", test_split="test", tags=True),
                       model=ModelConfig(head="macvr", concepts=4, frame_layers=1, confidence_hidden=32),
                       optim=OptimConfig(epochs=2, batch_size=4, lr=1e-4),
                       eval=EvalConfig(querybank_size=8), output_dir=str(out / "train"), progress=False)


def run_demo(out: Path, workers: int | None = None, report=print):
    """Every pipeline stage, then a short training run; returns the stage results and the metrics."""
    synth.require_ffmpeg()  # before anything is written
    make_demo_dataset(out / "data")
    build_tiny_clip(out / "models" / "tiny-clip")
    build_tiny_lm(out / "models" / "tiny-lm")
    build_tiny_vlm(out / "models" / "tiny-vlm")
    results = run_pipeline(demo_config(out, workers), report=report)
    shutil.rmtree(out / "train", ignore_errors=True)  # a new run each time, not the resumption of an old one
    run_training(demo_training(out))
    # The checkpoint's test metrics, and its ranking re-ranked by the skeleton scores (MMI Eq. 10).
    metrics = evaluate_checkpoint(out / "train", rerank=RerankOptions(str(out)))
    return results, metrics
