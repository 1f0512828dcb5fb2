"""Dataset adapters: tiny annotation files in each dataset's released format, empty video files,
and the exact manifest rows expected from them (REFERENCE.md, "Annotation files as released")."""

import json
import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.datasets import (
    FORMATS,
    ActivitynetOptions,
    AnnotationError,
    GenericOptions,
    Manifest,
    MsrvttOptions,
    MsvdOptions,
    build_manifest,
)
from pipeline.store.schema import CAPTIONS, MANIFEST_PROBLEMS, VIDEOS

# ---- helpers ---------------------------------------------------------------------------------


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def touch(root: Path, *relative_paths: str) -> None:
    for relative in relative_paths:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"")


def videos_of(manifest: Manifest) -> list[tuple]:
    return [(row["video_id"], row["path"], row["split"]) for row in manifest.videos.to_pylist()]


def captions_of(manifest: Manifest) -> list[tuple]:
    return [(row["caption_id"], row["video_id"], row["text"], row["split"]) for row in manifest.captions.to_pylist()]


def problems_of(manifest: Manifest) -> list[tuple]:
    return [(row["problem"], row["id"]) for row in manifest.problems.to_pylist()]


def video_extra(manifest: Manifest, video_id: str):
    [row] = [row for row in manifest.videos.to_pylist() if row["video_id"] == video_id]
    return None if row["extra"] is None else json.loads(row["extra"])


def caption_extra(manifest: Manifest, caption_id: str):
    [row] = [row for row in manifest.captions.to_pylist() if row["caption_id"] == caption_id]
    return None if row["extra"] is None else json.loads(row["extra"])


def detail(manifest: Manifest, problem: str, id_: str) -> str:
    [row] = [row for row in manifest.problems.to_pylist() if (row["problem"], row["id"]) == (problem, id_)]
    return row["detail"]


# ---- MSR-VTT ---------------------------------------------------------------------------------


def msrvtt_annotations(folder: Path, jsfusion_rows: str | None = None, sentences=None) -> Path:
    videos = [
        {"category": 9, "url": f"https://www.youtube.com/watch?v=y{i}", "video_id": f"video{i}",
         "start time": 137.72 + i, "end time": 149.44 + i, "split": "train", "id": i}
        for i in range(4)
    ]  # fmt: skip
    sentences = sentences or [
        {"caption": "a cartoon animals runs through an ice cave", "video_id": "video0", "sen_id": 0},
        {"caption": " a man is talking about a car ", "video_id": "video1", "sen_id": 1},
        {"caption": "a cartoon of a mouse", "video_id": "video0", "sen_id": 2},
        {"caption": "a car drives", "video_id": "video1", "sen_id": 3},
        {"caption": "unused: video2 is a test video", "video_id": "video2", "sen_id": 4},
    ]
    write_json(folder / "MSRVTT_data.json", {"info": {"year": 2016}, "videos": videos, "sentences": sentences})
    write_text(folder / "MSRVTT_train.9k.csv", "video_id\nvideo0\nvideo1\n")
    write_text(folder / "MSRVTT_train.7k.csv", "video_id\nvideo1\n")
    jsfusion = jsfusion_rows or (
        'ret0,msr2,video2,"a man, in a car, talks"\n'
        'ret1,msr3,video3,"a man, in a car, talks"\n'  # the same sentence for another video
    )
    write_text(folder / "MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence\n" + jsfusion)
    return folder


def test_msrvtt_9k_train_and_jsfusion_test(tmp_path):
    annotations = msrvtt_annotations(tmp_path / "ann")
    videos = tmp_path / "videos"
    touch(videos, "video0.mp4", "video1.mp4", "TrainValVideo/video2.mp4", "TestVideo/video3.mp4")
    manifest = build_manifest("msrvtt", annotations, videos)
    assert manifest.videos.schema == VIDEOS and manifest.captions.schema == CAPTIONS
    assert manifest.problems.schema == MANIFEST_PROBLEMS
    assert videos_of(manifest) == [
        ("video0", str(videos / "video0.mp4"), "train"),
        ("video1", str(videos / "video1.mp4"), "train"),
        ("video2", str(videos / "TrainValVideo/video2.mp4"), "test"),
        ("video3", str(videos / "TestVideo/video3.mp4"), "test"),
    ]
    assert captions_of(manifest) == [
        ("video0#0", "video0", "a cartoon animals runs through an ice cave", "train"),
        ("video0#1", "video0", "a cartoon of a mouse", "train"),
        ("video1#0", "video1", "a man is talking about a car", "train"),
        ("video1#1", "video1", "a car drives", "train"),
        ("video2#0", "video2", "a man, in a car, talks", "test"),
        ("video3#0", "video3", "a man, in a car, talks", "test"),
    ]
    assert video_extra(manifest, "video1") == {
        "category": 9, "url": "https://www.youtube.com/watch?v=y1", "start_time": 138.72, "end_time": 150.44,
        "official_split": "train",
    }  # fmt: skip
    assert caption_extra(manifest, "video1#1") == {"sen_id": 3}
    assert caption_extra(manifest, "video3#0") == {"key": "ret1", "vid_key": "msr3"}
    assert problems_of(manifest) == []


def test_msrvtt_7k_train_list(tmp_path):
    annotations = msrvtt_annotations(tmp_path / "ann")
    touch(tmp_path / "videos", "video1.mp4", "video2.mp4", "video3.mp4")
    manifest = build_manifest("msrvtt", annotations, tmp_path / "videos", MsrvttOptions(train_list="7k"))
    assert [(video_id, split) for video_id, _, split in videos_of(manifest)] == [
        ("video1", "train"),
        ("video2", "test"),
        ("video3", "test"),
    ]


def test_msrvtt_missing_and_ambiguous_videos(tmp_path):
    annotations = msrvtt_annotations(tmp_path / "ann")
    videos = tmp_path / "videos"
    touch(videos, "sub/video0.avi", "video0.MP4", "a/video0.webm", "video2.mp4", "video3.mp4", "video1.mp4.part")
    manifest = build_manifest("msrvtt", annotations, videos)
    assert videos_of(manifest)[:2] == [
        ("video0", str(videos / "video0.MP4"), "train"),  # the shortest path wins
        ("video1", None, "train"),  # a .part file is not a video
    ]
    assert problems_of(manifest) == [("ambiguous_video", "video0"), ("missing_video", "video1")]
    assert detail(manifest, "ambiguous_video", "video0") == (
        "3 files match: a/video0.webm, sub/video0.avi, video0.MP4; using video0.MP4"
    )
    assert detail(manifest, "missing_video", "video1") == "no file named video1.<video extension> under the video root"
    # The video without a file keeps its captions: later stages report it as a failure.
    assert [row[0] for row in captions_of(manifest)].count("video1#1") == 1


def test_msrvtt_video_in_train_and_test_is_a_duplicate_id(tmp_path):
    annotations = msrvtt_annotations(tmp_path / "ann", jsfusion_rows="ret0,msr1,video1,a car\nret1,msr3,video3,b\n")
    touch(tmp_path / "videos", "video0.mp4", "video1.mp4", "video3.mp4")
    manifest = build_manifest("msrvtt", annotations, tmp_path / "videos")
    assert problems_of(manifest) == [("duplicate_video_id", "video1")]
    assert detail(manifest, "duplicate_video_id", "video1") == (
        "first in MSRVTT_train.9k.csv line 3, again in MSRVTT_JSFUSION_test.csv line 2 "
        "(split 'train' vs 'test'); kept the first, dropped the repeat's 1 caption(s)"
    )
    assert [row for row in captions_of(manifest) if row[1] == "video1"] == [
        ("video1#0", "video1", "a man is talking about a car", "train"),
        ("video1#1", "video1", "a car drives", "train"),
    ]


def test_msrvtt_repeated_sen_id_is_a_duplicate_caption_id(tmp_path):
    sentences = [
        {"caption": "first", "video_id": "video0", "sen_id": 7},
        {"caption": "second", "video_id": "video1", "sen_id": 7},
        {"caption": "third", "video_id": "video1", "sen_id": 8},
    ]
    annotations = msrvtt_annotations(tmp_path / "ann", sentences=sentences)
    touch(tmp_path / "videos", "video0.mp4", "video1.mp4", "video2.mp4", "video3.mp4")
    manifest = build_manifest("msrvtt", annotations, tmp_path / "videos")
    assert problems_of(manifest) == [("duplicate_caption_id", "7")]
    assert "sen_id 7 of a caption of video1 ('second') was already used by a caption of video0" in detail(
        manifest, "duplicate_caption_id", "7"
    )
    assert [row[:3] for row in captions_of(manifest)][:2] == [
        ("video0#0", "video0", "first"),
        ("video1#0", "video1", "third"),
    ]


def test_msrvtt_errors_name_the_file_and_place(tmp_path):
    annotations = msrvtt_annotations(tmp_path / "ann")
    (tmp_path / "videos").mkdir()
    (annotations / "MSRVTT_data.json").rename(tmp_path / "MSRVTT_data.json")
    with pytest.raises(AnnotationError, match="msrvtt: no MSRVTT_data.json in"):  # it holds every caption
        build_manifest("msrvtt", annotations, tmp_path / "videos")
    (tmp_path / "MSRVTT_data.json").rename(annotations / "MSRVTT_data.json")
    write_text(annotations / "MSRVTT_JSFUSION_test.csv", "key,video_id\nret0,video2\n")
    with pytest.raises(AnnotationError, match=r"lacks the column\(s\) \['vid_key', 'sentence'\]"):
        build_manifest("msrvtt", annotations, tmp_path / "videos")
    write_text(annotations / "MSRVTT_train.9k.csv", "video_id\nvideo0\nvideo9\n")
    with pytest.raises(AnnotationError, match="MSRVTT_train.9k.csv line 3: video9 has no sentences"):
        build_manifest("msrvtt", annotations, tmp_path / "videos")
    write_json(annotations / "MSRVTT_data.json", {"videos": [], "sentences": [{"caption": "x", "video_id": "video0"}]})
    with pytest.raises(AnnotationError, match=r"sentences\[0\]: missing key 'sen_id'"):
        build_manifest("msrvtt", annotations, tmp_path / "videos")
    with pytest.raises(AnnotationError, match="is a file, but this dataset's annotations span several files"):
        build_manifest("msrvtt", annotations / "MSRVTT_data.json", tmp_path / "videos")


# ---- DiDeMo ----------------------------------------------------------------------------------


def didemo_row(video: str, description: str, annotation_id: int) -> dict:
    return {"video": video, "description": description, "times": [[1, 1], [1, 2]], "num_segments": 6,
            "dl_link": f"https://www.flickr.com/{video}", "annotation_id": annotation_id}  # fmt: skip


def test_didemo_one_paragraph_per_video(tmp_path):
    annotations = tmp_path / "ann"
    write_json(annotations / "train_data.json", [
        didemo_row("12090392@N02_13482799053_87ef417396.mov", " The girl runs.  ", 1),
        didemo_row("10015567@N08_3655084291_d8b58466fa.mp4", "a dog barks", 2),
        didemo_row("12090392@N02_13482799053_87ef417396.mov", "she jumps", 3),
    ])  # fmt: skip
    write_json(annotations / "val_data.json", [didemo_row("val@N00_1_a.m4v", "camera pans", 4)])
    write_json(annotations / "test_data.json", [didemo_row("test@N00_2_b.avi", "a boat", 5)])
    videos = tmp_path / "videos"
    touch(videos, "12090392@N02_13482799053_87ef417396.mp4", "10015567@N08_3655084291_d8b58466fa.mp4",
          "val@N00_1_a.m4v", "test@N00_2_b.mp4")  # fmt: skip
    manifest = build_manifest("didemo", annotations, videos)
    assert videos_of(manifest) == [
        ("10015567@N08_3655084291_d8b58466fa", str(videos / "10015567@N08_3655084291_d8b58466fa.mp4"), "train"),
        ("12090392@N02_13482799053_87ef417396", str(videos / "12090392@N02_13482799053_87ef417396.mp4"), "train"),
        ("test@N00_2_b", str(videos / "test@N00_2_b.mp4"), "test"),
        ("val@N00_1_a", str(videos / "val@N00_1_a.m4v"), "val"),
    ]
    assert captions_of(manifest)[1] == (
        "12090392@N02_13482799053_87ef417396#0", "12090392@N02_13482799053_87ef417396", "The girl runs. she jumps",
        "train",
    )  # fmt: skip
    assert len(captions_of(manifest)) == 4
    assert video_extra(manifest, "12090392@N02_13482799053_87ef417396") == {
        "file": "12090392@N02_13482799053_87ef417396.mov"
    }
    assert caption_extra(manifest, "12090392@N02_13482799053_87ef417396#0") == {
        "descriptions": ["The girl runs.", "she jumps"],
        "times": [[[1, 1], [1, 2]], [[1, 1], [1, 2]]],
        "annotation_ids": [1, 3],
    }
    assert problems_of(manifest) == []


def test_didemo_single_file_and_video_in_two_splits(tmp_path):
    annotations = tmp_path / "ann"
    write_json(annotations / "train_data.json", [didemo_row("a.mov", "one", 1)])
    write_json(annotations / "val_data.json", [])
    write_json(annotations / "test_data.json", [didemo_row("a.mov", "two", 2)])
    touch(tmp_path / "videos", "a.mov")
    manifest = build_manifest("didemo", annotations, tmp_path / "videos")
    assert videos_of(manifest) == [("a", str(tmp_path / "videos/a.mov"), "train")]
    assert problems_of(manifest) == [("duplicate_video_id", "a")]
    # A single released file is read alone, as its split.
    only_test = build_manifest("didemo", annotations / "test_data.json", tmp_path / "videos")
    assert captions_of(only_test) == [("a#0", "a", "two", "test")]
    assert problems_of(only_test) == []  # the other splits were left out on purpose, not missing
    write_json(annotations / "val_data.json", [{"video": "b.mov"}])
    with pytest.raises(AnnotationError, match=r"val_data.json: \[0\]: missing key 'description'"):
        build_manifest("didemo", annotations, tmp_path / "videos")


# ---- ActivityNet Captions --------------------------------------------------------------------


def test_activitynet_paragraphs_prefixes_and_extensions(tmp_path):
    annotations = tmp_path / "ann"
    write_json(annotations / "train.json", {
        "v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[0.83, 19.86], [17.37, 60.81]],
                          "sentences": ["A young woman is seen standing in a room.", " She then dances around."]},
        "v_-_8aSkX0f0k": {"duration": 40.0, "timestamps": [[0, 40.0]], "sentences": [" A man plays.  "]},
    })  # fmt: skip
    write_json(annotations / "val_1.json", {
        "v_uqiMw7tQ1Cc": {"duration": 55.15, "timestamps": [[0.28, 55.15]], "sentences": [" A weight lifting."]},
    })  # fmt: skip
    write_json(annotations / "val_2.json", {
        "v_uqiMw7tQ1Cc": {"duration": 55.15, "timestamps": [[1, 2]], "sentences": ["Another annotator."]},
    })  # fmt: skip
    videos = tmp_path / "videos"
    touch(videos, "v_QOlSCBRmfWY.mkv", "-_8aSkX0f0k.webm", "val/uqiMw7tQ1Cc.mp4")
    manifest = build_manifest("activitynet", annotations, videos)
    assert videos_of(manifest) == [
        ("v_-_8aSkX0f0k", str(videos / "-_8aSkX0f0k.webm"), "train"),
        ("v_QOlSCBRmfWY", str(videos / "v_QOlSCBRmfWY.mkv"), "train"),
        ("v_uqiMw7tQ1Cc", str(videos / "val/uqiMw7tQ1Cc.mp4"), "test"),
    ]
    assert captions_of(manifest) == [
        ("v_-_8aSkX0f0k#0", "v_-_8aSkX0f0k", "A man plays.", "train"),
        (
            "v_QOlSCBRmfWY#0",
            "v_QOlSCBRmfWY",
            "A young woman is seen standing in a room. She then dances around.",
            "train",
        ),
        ("v_uqiMw7tQ1Cc#0", "v_uqiMw7tQ1Cc", "A weight lifting.", "test"),
    ]
    assert video_extra(manifest, "v_QOlSCBRmfWY") == {"duration": 82.73, "timestamps": [[0.83, 19.86], [17.37, 60.81]]}
    assert caption_extra(manifest, "v_QOlSCBRmfWY#0") == {
        "sentences": ["A young woman is seen standing in a room.", "She then dances around."]
    }
    assert problems_of(manifest) == []
    val_2 = build_manifest("activitynet", annotations, videos, ActivitynetOptions(test_file="val_2"))
    assert captions_of(val_2)[-1] == ("v_uqiMw7tQ1Cc#0", "v_uqiMw7tQ1Cc", "Another annotator.", "test")


def test_activitynet_both_prefixed_and_bare_files_are_ambiguous(tmp_path):
    annotations = write_json(tmp_path / "val_1.json", {"v_abc": {"duration": 1, "timestamps": [], "sentences": []}})
    touch(tmp_path / "videos", "abc.mp4", "v_abc.mkv")
    manifest = build_manifest("activitynet", annotations, tmp_path / "videos")
    assert videos_of(manifest) == [("v_abc", str(tmp_path / "videos/abc.mp4"), "test")]
    assert captions_of(manifest) == []  # no sentences: the video stays, without a caption
    assert detail(manifest, "ambiguous_video", "v_abc") == "2 files match: abc.mp4, v_abc.mkv; using abc.mp4"


def test_activitynet_malformed_entry(tmp_path):
    write_json(tmp_path / "train.json", {"v_a": {"duration": 3, "timestamps": [[0, 1]], "sentences": ["x", "y"]}})
    (tmp_path / "videos").mkdir()
    with pytest.raises(AnnotationError, match="train.json: 'v_a': 1 timestamps but 2 sentences"):
        build_manifest("activitynet", tmp_path / "train.json", tmp_path / "videos")
    write_json(tmp_path / "train.json", {"v_a": {"duration": "3s", "timestamps": [], "sentences": []}})
    with pytest.raises(AnnotationError, match="'v_a', key 'duration': expected the duration in seconds, got str"):
        build_manifest("activitynet", tmp_path / "train.json", tmp_path / "videos")
    with pytest.raises(AnnotationError, match=r"not one of the released annotation files \(train.json, val_1.json\)"):
        build_manifest("activitynet", write_json(tmp_path / "val.json", {}), tmp_path / "videos")


# ---- MSVD ------------------------------------------------------------------------------------


def msvd_lists(folder: Path) -> None:
    write_text(folder / "train_list.txt", "-4wsuPCjDBc_5_15\n_0nX-El-ySo_83_93\n")
    write_text(folder / "val_list.txt", "\n")
    write_text(folder / "test_list.txt", "zv2RIbUsnSw_159_165\n")


def test_msvd_json_captions_and_lists(tmp_path):
    annotations = tmp_path / "ann"
    msvd_lists(annotations)
    write_json(annotations / "captions_msvd.json", {
        "-4wsuPCjDBc_5_15": [f"caption {k} " for k in range(12)],
        "_0nX-El-ySo_83_93": ["a man is cutting a bottle"],
        "zv2RIbUsnSw_159_165": ["a woman slices"],
        "unlisted_1_2": ["not in any split"],
    })  # fmt: skip
    videos = tmp_path / "videos"
    touch(videos, "YouTubeClips/-4wsuPCjDBc_5_15.avi", "YouTubeClips/_0nX-El-ySo_83_93.avi", "zv2RIbUsnSw_159_165.avi")
    manifest = build_manifest("msvd", annotations, videos)
    assert videos_of(manifest) == [
        ("-4wsuPCjDBc_5_15", str(videos / "YouTubeClips/-4wsuPCjDBc_5_15.avi"), "train"),
        ("_0nX-El-ySo_83_93", str(videos / "YouTubeClips/_0nX-El-ySo_83_93.avi"), "train"),
        ("zv2RIbUsnSw_159_165", str(videos / "zv2RIbUsnSw_159_165.avi"), "test"),
    ]
    captions = captions_of(manifest)
    # Sorted by caption index, not by caption id text ("#10" sorts before "#2" as a string).
    assert [caption_id for caption_id, *_ in captions[:12]] == [f"-4wsuPCjDBc_5_15#{k}" for k in range(12)]
    assert captions[11] == ("-4wsuPCjDBc_5_15#11", "-4wsuPCjDBc_5_15", "caption 11", "train")
    assert captions[12:] == [
        ("_0nX-El-ySo_83_93#0", "_0nX-El-ySo_83_93", "a man is cutting a bottle", "train"),
        ("zv2RIbUsnSw_159_165#0", "zv2RIbUsnSw_159_165", "a woman slices", "test"),
    ]
    assert manifest.captions.column("extra").null_count == 14 and problems_of(manifest) == []


def test_msvd_pickle_only_with_explicit_flag(tmp_path):
    annotations = tmp_path / "ann"
    msvd_lists(annotations)
    raw = {
        "-4wsuPCjDBc_5_15": [["a", "man", "sings"], ["someone", "is", "singing"]],
        "_0nX-El-ySo_83_93": [["a", "cat"]],
        "zv2RIbUsnSw_159_165": [["a", "woman", "slices", "an", "onion"]],
    }
    (annotations / "raw-captions.pkl").write_bytes(pickle.dumps(raw))
    (tmp_path / "videos").mkdir()
    with pytest.raises(AnnotationError, match="found only .*raw-captions.pkl; unpickling can run arbitrary code"):
        build_manifest("msvd", annotations, tmp_path / "videos")
    manifest = build_manifest("msvd", annotations, tmp_path / "videos", MsvdOptions(allow_pickle=True))
    assert captions_of(manifest)[:2] == [
        ("-4wsuPCjDBc_5_15#0", "-4wsuPCjDBc_5_15", "a man sings", "train"),
        ("-4wsuPCjDBc_5_15#1", "-4wsuPCjDBc_5_15", "someone is singing", "train"),
    ]
    assert problems_of(manifest) == [("missing_video", video_id) for video_id in raw]
    write_text(annotations / "test_list.txt", "zv2RIbUsnSw_159_165\nnot_listed_0_1\n")
    with pytest.raises(AnnotationError, match="test_list.txt line 2: not_listed_0_1 has no captions"):
        build_manifest("msvd", annotations, tmp_path / "videos", MsvdOptions(allow_pickle=True))


# ---- LSMDC -----------------------------------------------------------------------------------

CLIP_A = "0001_American_Beauty_00.00.51.926-00.00.54.129"
CLIP_B = "0001_American_Beauty_00.01.01.284-00.01.03.125"
CLIP_C = "3001_21_JUMP_STREET_00.00.11.000-00.00.13.500"


def test_lsmdc_rows_movie_folders_and_no_quoting(tmp_path):
    annotations = tmp_path / "ann"
    write_text(annotations / "LSMDC16_annos_training.csv", (
        f"{CLIP_A}\t00.00.51.926\t00.00.54.129\t00.00.51.886\t00.00.54.227\tSOMEONE looks at \"the\" sky.\n"
        f"{CLIP_B}\t00.01.01.284\t00.01.03.125\t00.01.01.200\t00.01.03.300\tHe turns, smiling.\r\n"
        f"{CLIP_A}\t00.00.51.926\t00.00.54.129\t00.00.51.886\t00.00.54.227\t\"She nods.\n"
    ))  # fmt: skip
    write_text(annotations / "LSMDC16_annos_val.csv", "")
    write_text(annotations / "LSMDC16_annos_test.csv", f"{CLIP_C}\t1\t2\t3\t4\tA car stops.\n")
    videos = tmp_path / "videos"
    touch(videos, f"0001_American_Beauty/{CLIP_A}.avi", f"copies/{CLIP_A}.mp4", f"{CLIP_B}.avi",
          f"3001_21_JUMP_STREET/{CLIP_C}.avi")  # fmt: skip
    manifest = build_manifest("lsmdc", annotations, videos)
    assert videos_of(manifest) == [
        (CLIP_A, str(videos / f"0001_American_Beauty/{CLIP_A}.avi"), "train"),  # preferred, not ambiguous
        (CLIP_B, str(videos / f"{CLIP_B}.avi"), "train"),  # found by name elsewhere
        (CLIP_C, str(videos / f"3001_21_JUMP_STREET/{CLIP_C}.avi"), "test"),
    ]
    assert captions_of(manifest) == [
        (f"{CLIP_A}#0", CLIP_A, 'SOMEONE looks at "the" sky.', "train"),
        (f"{CLIP_A}#1", CLIP_A, '"She nods.', "train"),
        (f"{CLIP_B}#0", CLIP_B, "He turns, smiling.", "train"),
        (f"{CLIP_C}#0", CLIP_C, "A car stops.", "test"),
    ]
    assert video_extra(manifest, CLIP_A) == {"movie": "0001_American_Beauty"}
    assert caption_extra(manifest, f"{CLIP_B}#0") == {
        "start_aligned": "00.01.01.284", "end_aligned": "00.01.03.125",
        "start_extracted": "00.01.01.200", "end_extracted": "00.01.03.300",
    }  # fmt: skip
    assert problems_of(manifest) == []


def test_lsmdc_wrong_field_count(tmp_path):
    path = write_text(tmp_path / "LSMDC16_annos_val.csv", f"{CLIP_A}\t1\t2\t3\t4\tok\n{CLIP_B}\t1\t2\tshort\n")
    (tmp_path / "videos").mkdir()
    with pytest.raises(AnnotationError, match="LSMDC16_annos_val.csv line 2: expected 6 tab-separated fields.*got 4"):
        build_manifest("lsmdc", path, tmp_path / "videos")


# ---- VATEX -----------------------------------------------------------------------------------


def test_vatex_english_captions_and_ids_with_underscores(tmp_path):
    annotations = tmp_path / "ann"
    write_json(annotations / "vatex_training_v1.0.json", [
        {"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": [" A man plays a drum.", "Someone drums"],
         "chCap": ["一个男人在打鼓。"]},
    ])  # fmt: skip
    write_json(annotations / "vatex_validation_v1.0.json", [{"videoID": "_-_c9kXZdIo_000005_000015", "enCap": ["x"]}])
    videos = tmp_path / "videos"
    touch(videos, "Ptf_2VRj-V0_000122_000132.mp4")
    manifest = build_manifest("vatex", annotations, videos)  # without the public test file
    assert videos_of(manifest) == [
        ("Ptf_2VRj-V0_000122_000132", str(videos / "Ptf_2VRj-V0_000122_000132.mp4"), "train"),
        ("_-_c9kXZdIo_000005_000015", None, "val"),
    ]
    assert captions_of(manifest) == [
        ("Ptf_2VRj-V0_000122_000132#0", "Ptf_2VRj-V0_000122_000132", "A man plays a drum.", "train"),
        ("Ptf_2VRj-V0_000122_000132#1", "Ptf_2VRj-V0_000122_000132", "Someone drums", "train"),
        ("_-_c9kXZdIo_000005_000015#0", "_-_c9kXZdIo_000005_000015", "x", "val"),
    ]
    assert video_extra(manifest, "Ptf_2VRj-V0_000122_000132") == {"youtube_id": "Ptf_2VRj-V0", "start": 122, "end": 132}
    assert video_extra(manifest, "_-_c9kXZdIo_000005_000015")["youtube_id"] == "_-_c9kXZdIo"
    assert problems_of(manifest) == [
        ("missing_split_file", "vatex_public_test_english_v1.1.json"),  # downloaded separately
        ("missing_video", "_-_c9kXZdIo_000005_000015"),
    ]
    write_json(annotations / "vatex_public_test_english_v1.1.json", [{"videoID": "abc_12", "enCap": ["y"]}])
    with pytest.raises(AnnotationError, match=r"\[0\]: videoID 'abc_12' is not <YouTube id>_<start>_<end>"):
        build_manifest("vatex", annotations, videos)


# ---- Charades --------------------------------------------------------------------------------

CHARADES_HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"


def test_charades_quoted_fields_and_descriptions(tmp_path):
    annotations = tmp_path / "ann"
    write_text(annotations / "Charades_v1_train.csv", CHARADES_HEADER + (
        '46GP8,HR43,Kitchen,6,7,Yes,"A person cooks food on a stove, then sips a glass of water.",food;stove;glass,'
        '"A person is cooking on a stove.;The person, then, drinks water. ",c092 11.90 21.20;c147 0.00 12.60,24.83\n'
    ))  # fmt: skip
    write_text(annotations / "Charades_v1_test.csv", CHARADES_HEADER + (
        'YSKX3,TN3V,Bedroom,,,Yes,"Someone reads,\nthen sleeps.",book,A person reads a book.,,30.5\n'
    ))  # fmt: skip
    videos = tmp_path / "videos"
    touch(videos, "Charades_v1_480/46GP8.mp4", "YSKX3.mp4")
    manifest = build_manifest("charades", annotations, videos)
    assert videos_of(manifest) == [
        ("46GP8", str(videos / "Charades_v1_480/46GP8.mp4"), "train"),
        ("YSKX3", str(videos / "YSKX3.mp4"), "test"),
    ]
    assert captions_of(manifest) == [
        ("46GP8#0", "46GP8", "A person is cooking on a stove.", "train"),
        ("46GP8#1", "46GP8", "The person, then, drinks water.", "train"),
        ("YSKX3#0", "YSKX3", "A person reads a book.", "test"),
    ]
    assert video_extra(manifest, "46GP8") == {
        "subject": "HR43", "scene": "Kitchen", "quality": "6", "relevance": "7", "verified": "Yes",
        "script": "A person cooks food on a stove, then sips a glass of water.", "objects": "food;stove;glass",
        "actions": "c092 11.90 21.20;c147 0.00 12.60", "length": "24.83",
    }  # fmt: skip
    assert video_extra(manifest, "YSKX3")["script"] == "Someone reads,\nthen sleeps."
    assert problems_of(manifest) == []


def test_charades_short_row(tmp_path):
    path = write_text(tmp_path / "Charades_v1_test.csv", CHARADES_HEADER + "ABC12,S,Hall\n")
    (tmp_path / "videos").mkdir()
    with pytest.raises(AnnotationError, match="Charades_v1_test.csv line 2: expected 11 fields"):
        build_manifest("charades", path, tmp_path / "videos")


# ---- generic ---------------------------------------------------------------------------------


def test_generic_csv_paths_splits_and_problems(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "a/v1.mp4", "other/v1b.mp4", "v3.mkv", "v5.mp4")
    touch(tmp_path, "outside.mp4")
    annotations = write_text(tmp_path / "manifest.csv", (
        "video_id,path,caption,split,caption_id,lang\n"
        "v1,a/v1.mp4,\"a cat, sleeping\",train,c1,en\n"
        f"v2,{videos / 'a/v1.mp4'},absolute path,,c2,en\n"
        "v1,a/v1.mp4,a second caption,train,c3,en\n"
        "v1,other/v1b.mp4,another file,train,c4,en\n"
        "v3,,found by id,val,c5,en\n"
        "v4,../outside.mp4,escapes the root,val,c6,en\n"
        "v5,v5.mp4,repeats a caption id,val,c1,en\n"
        "v6,gone.mp4,no such file,val,c7,en\n"
    ))  # fmt: skip
    manifest = build_manifest("generic", annotations, videos, GenericOptions(default_split="all"))
    assert videos_of(manifest) == [
        ("v1", str(videos / "a/v1.mp4"), "train"),
        ("v2", str(videos / "a/v1.mp4"), "all"),
        ("v3", str(videos / "v3.mkv"), "val"),
        ("v4", None, "val"),
        ("v5", str(videos / "v5.mp4"), "val"),
        ("v6", None, "val"),
    ]
    assert captions_of(manifest) == [
        ("v1#0", "v1", "a cat, sleeping", "train"),
        ("v1#1", "v1", "a second caption", "train"),
        ("v2#0", "v2", "absolute path", "all"),
        ("v3#0", "v3", "found by id", "val"),
        ("v4#0", "v4", "escapes the root", "val"),
        ("v6#0", "v6", "no such file", "val"),
    ]
    assert caption_extra(manifest, "v1#1") == {"caption_id": "c3", "lang": "en"}
    assert problems_of(manifest) == [
        ("duplicate_caption_id", "c1"),
        ("duplicate_video_id", "v1"),
        ("missing_video", "v6"),
        ("path_outside_root", "v4"),
    ]
    assert detail(manifest, "duplicate_video_id", "v1") == (
        "first in manifest.csv line 2, again in manifest.csv line 5 (path 'a/v1.mp4' vs 'other/v1b.mp4'); "
        "kept the first, dropped the repeat's 1 caption(s)"
    )
    assert detail(manifest, "path_outside_root", "v4") == (
        f"path ../outside.mp4 resolves to {tmp_path / 'outside.mp4'}, outside the video root"
    )
    assert detail(manifest, "missing_video", "v6") == "path gone.mp4: no such file under the video root"


def test_generic_jsonl_and_parquet(tmp_path):
    touch(tmp_path / "videos", "x.mp4")
    rows = [{"video_id": "x", "path": "x.mp4", "caption": " hello ", "split": "test"},
            {"video_id": 7, "path": None, "caption": "numeric id"}]  # fmt: skip
    jsonl = write_text(tmp_path / "m.jsonl", "\n".join(json.dumps(row) for row in rows) + "\n\n")
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([{**row, "video_id": str(row["video_id"])} for row in rows]), parquet)
    for annotations in (jsonl, parquet):
        manifest = build_manifest("generic", annotations, tmp_path / "videos")
        assert videos_of(manifest) == [("7", None, "test"), ("x", str(tmp_path / "videos/x.mp4"), "test")]
        assert captions_of(manifest) == [("7#0", "7", "numeric id", "test"), ("x#0", "x", "hello", "test")]
        assert problems_of(manifest) == [("missing_video", "7")]
    write_text(jsonl, '{"video_id": "x", "path": "x.mp4", "caption": "ok"}\n{"video_id": "y", "path": ""}\n')
    with pytest.raises(AnnotationError, match=r"m.jsonl line 2: missing key\(s\) \['caption'\]"):
        build_manifest("generic", jsonl, tmp_path / "videos")
    with pytest.raises(AnnotationError, match="has extension '.tsv'; expected .csv, .jsonl or .parquet"):
        build_manifest("generic", write_text(tmp_path / "m.tsv", ""), tmp_path / "videos")


# ---- shared behaviour ------------------------------------------------------------------------


def test_symlinks_inside_and_outside_the_root(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "real/inside.mp4")
    touch(tmp_path, "elsewhere/outside.mp4", "elsewhere/linked_dir_video.mp4")
    os.symlink(videos / "real/inside.mp4", videos / "v_in.mp4")
    os.symlink(tmp_path / "elsewhere/outside.mp4", videos / "v_out.mp4")
    os.symlink(tmp_path / "elsewhere", videos / "big_disk")  # a linked folder is searched too
    os.symlink(videos, videos / "real/loop")  # a cycle must not hang the scan
    annotations = write_text(tmp_path / "Charades_v1_test.csv", CHARADES_HEADER + "".join(
        f"{video_id},S,Hall,,,Yes,script,,a caption,,1\n" for video_id in ("v_in", "v_out", "linked_dir_video")
    ))  # fmt: skip
    manifest = build_manifest("charades", annotations, videos)
    assert videos_of(manifest) == [
        ("linked_dir_video", None, "test"),
        ("v_in", str(videos / "v_in.mp4"), "test"),
        ("v_out", None, "test"),
    ]
    assert problems_of(manifest) == [("path_outside_root", "linked_dir_video"), ("path_outside_root", "v_out")]
    assert detail(manifest, "path_outside_root", "v_out") == (
        f"v_out.mp4 resolves to {tmp_path / 'elsewhere/outside.mp4'}, outside the video root"
    )


def test_unknown_format_and_missing_paths(tmp_path):
    (tmp_path / "videos").mkdir()
    with pytest.raises(AnnotationError, match="unknown dataset format 'webvid'; known formats: msrvtt, didemo, "
                                              "activitynet, msvd, lsmdc, vatex, charades, generic"):  # fmt: skip
        build_manifest("webvid", tmp_path, tmp_path / "videos")
    with pytest.raises(AnnotationError, match="annotations path .*nowhere does not exist"):
        build_manifest("didemo", tmp_path / "nowhere", tmp_path / "videos")
    with pytest.raises(AnnotationError, match="video folder .*novideos does not exist"):
        build_manifest("didemo", tmp_path, tmp_path / "novideos")
    with pytest.raises(TypeError, match="format msvd takes MsvdOptions options, got MsrvttOptions"):
        build_manifest("msvd", tmp_path, tmp_path / "videos", MsrvttOptions())


def test_released_files_found_in_a_subfolder_but_not_twice(tmp_path):
    write_text(tmp_path / "ann/csv/Charades_v1_train.csv", CHARADES_HEADER + "A1,S,Hall,,,Yes,s,,c,,1\n")
    write_text(tmp_path / "ann/csv/Charades_v1_test.csv", CHARADES_HEADER)
    (tmp_path / "videos").mkdir()
    assert videos_of(build_manifest("charades", tmp_path / "ann", tmp_path / "videos")) == [("A1", None, "train")]
    write_text(tmp_path / "ann/old/Charades_v1_test.csv", CHARADES_HEADER)
    with pytest.raises(AnnotationError, match="several files named Charades_v1_test.csv under"):
        build_manifest("charades", tmp_path / "ann", tmp_path / "videos")


def test_every_format_has_default_options_and_a_description():
    assert list(FORMATS) == ["msrvtt", "didemo", "activitynet", "msvd", "lsmdc", "vatex", "charades", "generic"]
    for name, dataset in FORMATS.items():
        assert dataset.name == name and dataset.description and "\n" not in dataset.description
        dataset.options()  # every option has a default


# ---- partial downloads -----------------------------------------------------------------------
# A folder may lack some of a dataset's split files: the splits present are read, each absent
# file is a `missing_split_file` problem, and only a folder with none of them is refused.


def didemo_release(folder: Path) -> Path:
    for split in ("train", "val", "test"):
        write_json(folder / f"{split}_data.json", [didemo_row(f"{split}_video.mp4", f"a {split} video", 1)])
    return folder


def activitynet_release(folder: Path) -> Path:
    for name, key in (("train.json", "v_train"), ("val_1.json", "v_test")):
        write_json(folder / name, {key: {"duration": 1.0, "timestamps": [[0, 1]], "sentences": ["x"]}})
    return folder


def lsmdc_release(folder: Path) -> Path:
    for name in ("training", "val", "test"):
        write_text(folder / f"LSMDC16_annos_{name}.csv", f"{name}_clip\t1\t2\t3\t4\tA sentence.\n")
    return folder


def vatex_release(folder: Path) -> Path:
    for name, video_id in (("training_v1.0", "tr_000001_000002"), ("validation_v1.0", "va_000001_000002"),
                           ("public_test_english_v1.1", "te_000001_000002")):  # fmt: skip
        write_json(folder / f"vatex_{name}.json", [{"videoID": video_id, "enCap": ["a caption"]}])
    return folder


def charades_release(folder: Path) -> Path:
    for split in ("train", "test"):
        write_text(folder / f"Charades_v1_{split}.csv", CHARADES_HEADER + f"{split}1,S,Hall,,,Yes,s,,a caption,,1\n")
    return folder


def msvd_release(folder: Path) -> Path:
    for split in ("train", "val", "test"):
        write_text(folder / f"{split}_list.txt", f"{split}_id_1_2\n")
    write_json(folder / "captions_msvd.json", {f"{split}_id_1_2": ["a caption"] for split in ("train", "val", "test")})
    return folder


# format -> (writer of a full release into a folder, {split file: (its split, its video ids)})
RELEASES = {
    "didemo": (didemo_release, {"train_data.json": ("train", ["train_video"]),
                                "val_data.json": ("val", ["val_video"]),
                                "test_data.json": ("test", ["test_video"])}),
    "activitynet": (activitynet_release, {"train.json": ("train", ["v_train"]), "val_1.json": ("test", ["v_test"])}),
    "lsmdc": (lsmdc_release, {"LSMDC16_annos_training.csv": ("train", ["training_clip"]),
                              "LSMDC16_annos_val.csv": ("val", ["val_clip"]),
                              "LSMDC16_annos_test.csv": ("test", ["test_clip"])}),
    "vatex": (vatex_release, {"vatex_training_v1.0.json": ("train", ["tr_000001_000002"]),
                              "vatex_validation_v1.0.json": ("val", ["va_000001_000002"]),
                              "vatex_public_test_english_v1.1.json": ("test", ["te_000001_000002"])}),
    "charades": (charades_release, {"Charades_v1_train.csv": ("train", ["train1"]),
                                    "Charades_v1_test.csv": ("test", ["test1"])}),
    "msrvtt": (msrvtt_annotations, {"MSRVTT_train.9k.csv": ("train", ["video0", "video1"]),
                                    "MSRVTT_JSFUSION_test.csv": ("test", ["video2", "video3"])}),
    "msvd": (msvd_release, {"train_list.txt": ("train", ["train_id_1_2"]),
                            "val_list.txt": ("val", ["val_id_1_2"]),
                            "test_list.txt": ("test", ["test_id_1_2"])}),
}  # fmt: skip


@pytest.mark.parametrize(
    ("fmt", "missing"), [(fmt, name) for fmt, (_, split_files) in RELEASES.items() for name in split_files]
)
def test_partial_download_reads_the_splits_present(tmp_path, fmt, missing):
    write_release, split_files = RELEASES[fmt]
    annotations = write_release(tmp_path / "ann")
    (annotations / missing).unlink()
    (tmp_path / "videos").mkdir()
    manifest = build_manifest(fmt, annotations, tmp_path / "videos")
    present = {name: listed for name, listed in split_files.items() if name != missing}
    expected = sorted((video_id, split) for split, video_ids in present.values() for video_id in video_ids)
    assert [(video_id, split) for video_id, _, split in videos_of(manifest)] == expected
    assert {row[3] for row in captions_of(manifest)} == {split for split, _ in present.values()}
    # Sorted by (problem, id): the missing file comes before the videos that have no file here.
    assert problems_of(manifest) == [("missing_split_file", missing)] + [
        ("missing_video", video_id) for video_id, _ in expected
    ]
    assert detail(manifest, "missing_split_file", missing) == (
        f"no {split_files[missing][0]} split: {missing} is not in the annotations folder or its subfolders"
    )


@pytest.mark.parametrize("fmt", list(RELEASES))
def test_folder_without_any_split_file_is_refused(tmp_path, fmt):
    write_release, split_files = RELEASES[fmt]
    annotations = write_release(tmp_path / "ann")
    for name in split_files:
        (annotations / name).unlink()
    (tmp_path / "videos").mkdir()
    with pytest.raises(AnnotationError) as caught:
        build_manifest(fmt, annotations, tmp_path / "videos")
    assert str(caught.value) == (
        f"{fmt}: none of the released split files ({', '.join(split_files)}) is in {annotations} "
        "(looked in the folder and its subfolders)"
    )


def test_several_missing_split_files_are_each_listed(tmp_path):
    annotations = didemo_release(tmp_path / "ann")
    (annotations / "val_data.json").unlink()
    (annotations / "train_data.json").unlink()
    touch(tmp_path / "videos", "test_video.mp4")
    manifest = build_manifest("didemo", annotations, tmp_path / "videos")
    assert videos_of(manifest) == [("test_video", str(tmp_path / "videos/test_video.mp4"), "test")]
    assert problems_of(manifest) == [("missing_split_file", "train_data.json"), ("missing_split_file", "val_data.json")]


@pytest.mark.parametrize(
    ("fmt", "required", "message"),
    [
        ("msrvtt", "MSRVTT_data.json", "msrvtt: no MSRVTT_data.json in"),
        ("msvd", "captions_msvd.json", "msvd: neither captions_msvd.json nor raw-captions.pkl in"),
    ],
)
def test_the_file_holding_every_caption_stays_required(tmp_path, fmt, required, message):
    annotations = RELEASES[fmt][0](tmp_path / "ann")
    (annotations / required).unlink()
    (tmp_path / "videos").mkdir()
    with pytest.raises(AnnotationError, match=message):
        build_manifest(fmt, annotations, tmp_path / "videos")
