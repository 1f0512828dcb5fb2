"""`tvr export-tags`: the tag files MAC-VR's released code reads (REFERENCE.md), from planted tags."""

from __future__ import annotations

import ast
import csv
import json

import pytest
from test_train import _plant_tags, _write_manifest

from pipeline.cli import main
from pipeline.config import ConfigError
from pipeline.tags.export import export_tags


@pytest.fixture
def tagged(tmp_path, ray_session):
    def make(source_format: str):
        out = tmp_path / source_format
        texts, inputs = _write_manifest(out, 3, 2, source_format=source_format)
        visual = {v: [f"{v} scene", "outdoors, sunny"] for v in texts}
        visual["video1"] = []  # a video whose requests gave no tags
        textual = {f"{v}#{k}": [t.split()[0], "it's \"quoted\""] for v, c in texts.items() for k, t in enumerate(c)}
        _plant_tags(out, inputs, visual, textual)
        return out, texts, visual, textual

    return make


def test_msrvtt_gets_one_csv_row_per_caption_with_list_literals(tagged, tmp_path, capsys):
    out, texts, visual, textual = tagged("msrvtt")
    summary = export_tags(str(out), tmp_path / "data")
    assert summary.rows == 3 * 2 + 2 * 1 and summary.without_visual == 2 and summary.without_textual == 0
    for split, name, videos in (("train", "training_9k.csv", range(3)), ("test", "testing.csv", range(3, 5))):
        with open(tmp_path / "data" / "anns" / name, newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["video_id", "sentence", "textual_tags", "visual_tags"]
        expected = [(f"video{i}", t, textual[f"video{i}#{k}"], visual[f"video{i}"])
                    for i in videos for k, t in enumerate(texts[f"video{i}"])]
        read = [(r[0], r[1], ast.literal_eval(r[2]), ast.literal_eval(r[3])) for r in rows[1:]]  # by position
        assert sorted(read) == sorted(expected)
    assert main(["export-tags", str(out), str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    assert "training_9k.csv" in printed and "without visual tags: 2" in printed


def test_paragraph_datasets_get_all_concepts_json(tagged, tmp_path):
    out, texts, visual, textual = tagged("didemo")
    summary = export_tags(str(out), tmp_path / "data")
    concepts = json.loads((tmp_path / "data" / "all_concepts_llama3.json").read_text())
    assert sorted(concepts) == sorted(texts) and summary.rows == len(texts)
    assert ast.literal_eval(concepts["video0"][0]) == ["video0 scene", "outdoors, sunny"]
    # video0 has two captions here: their textual tags once each, in order
    assert ast.literal_eval(concepts["video0"][1]) == [texts["video0"][0].split()[0], "it's \"quoted\""] + \
        ([texts["video0"][1].split()[0]] if texts["video0"][1].split()[0] != texts["video0"][0].split()[0] else [])
    assert ast.literal_eval(concepts["video1"][0]) == []


def test_other_formats_and_missing_tags_are_clear_errors(tagged, tmp_path, capsys):
    out, *_ = tagged("msvd")
    with pytest.raises(ConfigError, match="'msvd': MAC-VR's released code reads tag files for msrvtt"):
        export_tags(str(out), tmp_path / "data")
    bare = tmp_path / "bare"
    _write_manifest(bare, 1, 1, source_format="msrvtt")
    assert main(["export-tags", str(bare), str(tmp_path / "data")]) == 2
    assert "no visual_tags in" in capsys.readouterr().err
