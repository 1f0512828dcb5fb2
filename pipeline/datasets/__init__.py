"""Dataset adapters: the annotation files researchers have, read into one canonical manifest.

Each format reads its released files into `Annotations`; `build_manifest` then finds every
video's file under the video root and lists, by id, whatever needs attention (missing or
ambiguous files, repeated ids, paths outside the root, released split files absent from the
annotations folder). The exact file formats are specified in REFERENCE.md, "Annotation files
as released".
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.datasets import activitynet, charades, didemo, generic, lsmdc, msrvtt, msvd, vatex
from pipeline.datasets.activitynet import ActivitynetOptions
from pipeline.datasets.assemble import Manifest, assemble
from pipeline.datasets.charades import CharadesOptions
from pipeline.datasets.didemo import DidemoOptions
from pipeline.datasets.generic import GenericOptions
from pipeline.datasets.lsmdc import LsmdcOptions
from pipeline.datasets.msrvtt import MsrvttOptions
from pipeline.datasets.msvd import MsvdOptions
from pipeline.datasets.records import AnnotationError, Annotations, CaptionRecord, VideoRecord
from pipeline.datasets.vatex import VatexOptions
from pipeline.datasets.video_index import VIDEO_EXTENSIONS, VideoIndex


@dataclass(frozen=True)
class Format:
    name: str
    options: type  # a dataclass whose defaults give the papers' setting
    read: Callable[[Path, Any], Annotations]  # (annotations folder or file, options) -> Annotations
    description: str  # one line, for `tvr manifest --help`


FORMATS: dict[str, Format] = {
    "msrvtt": Format(
        "msrvtt",
        MsrvttOptions,
        msrvtt.read,
        "MSR-VTT: MSRVTT_data.json + MSRVTT_train.9k.csv (or 7k) + MSRVTT_JSFUSION_test.csv (1k-A test)",
    ),
    "didemo": Format(
        "didemo", DidemoOptions, didemo.read, "DiDeMo: {train,val,test}_data.json, one paragraph per video"
    ),
    "activitynet": Format(
        "activitynet",
        ActivitynetOptions,
        activitynet.read,
        "ActivityNet Captions: train.json + val_1.json (test), one paragraph per video",
    ),
    "msvd": Format(
        "msvd",
        MsvdOptions,
        msvd.read,
        "MSVD: captions_msvd.json (or raw-captions.pkl with allow_pickle) + {train,val,test}_list.txt",
    ),
    "lsmdc": Format(
        "lsmdc", LsmdcOptions, lsmdc.read, "LSMDC: LSMDC16_annos_{training,val,test}.csv, tab-separated, no header"
    ),
    "vatex": Format(
        "vatex",
        VatexOptions,
        vatex.read,
        "VATEX: vatex_training_v1.0.json + vatex_validation_v1.0.json (+ public test), English captions",
    ),
    "charades": Format(
        "charades",
        CharadesOptions,
        charades.read,
        "Charades: Charades_v1_{train,test}.csv, each ';'-separated description a caption",
    ),
    "generic": Format(
        "generic",
        GenericOptions,
        generic.read,
        "Any dataset: one CSV, JSONL or Parquet file with video_id, path, caption and optional split",
    ),
}


def build_manifest(fmt: str, annotations: Path, videos_dir: Path, options: Any = None) -> Manifest:
    """Reads `annotations` as format `fmt` and matches each video to its file under `videos_dir`.

    Raises AnnotationError (one line, naming the file) for an unknown format, a video folder that
    does not exist, a malformed or unreadable annotation file, a folder without any of the
    dataset's split files, or without a file it cannot do without (MSR-VTT's MSRVTT_data.json,
    MSVD's captions). A split file absent from a folder that holds others is a
    `missing_split_file` row of `Manifest.problems`, as is everything else that needs attention;
    no annotated video or caption is silently dropped.
    """
    if fmt not in FORMATS:
        raise AnnotationError(f"unknown dataset format {fmt!r}; known formats: {', '.join(FORMATS)}")
    dataset = FORMATS[fmt]
    if options is None:
        options = dataset.options()
    if not isinstance(options, dataset.options):
        raise TypeError(f"format {fmt} takes {dataset.options.__name__} options, got {type(options).__name__}")
    annotations, videos_dir = Path(annotations), Path(videos_dir)
    if not annotations.exists():
        raise AnnotationError(f"{fmt}: annotations path {annotations} does not exist")
    if not videos_dir.is_dir():
        raise AnnotationError(f"{fmt}: video folder {videos_dir} does not exist or is not a folder")
    return assemble(dataset.read(annotations, options), VideoIndex(videos_dir))


__all__ = [
    "FORMATS",
    "VIDEO_EXTENSIONS",
    "ActivitynetOptions",
    "AnnotationError",
    "Annotations",
    "CaptionRecord",
    "CharadesOptions",
    "DidemoOptions",
    "Format",
    "GenericOptions",
    "LsmdcOptions",
    "Manifest",
    "MsrvttOptions",
    "MsvdOptions",
    "VatexOptions",
    "VideoRecord",
    "build_manifest",
]
