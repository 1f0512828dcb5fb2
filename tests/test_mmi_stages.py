"""The MMI stages through the real runner: question_clusters, demonstrations, text_skeletons,
video_skeletons and skeleton_scores, with a scripted engine that reads what it is asked
(tests/mmi_engine.py), on a manifest of three solid-colour videos and six captions."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
from mmi_engine import COLOURS
from PIL import Image

from pipeline.engines.config import PluginEngineConfig
from pipeline.mmi.asking import skeleton_request_id
from pipeline.mmi.demonstrations import select_demonstration
from pipeline.run.runner import RunnerConfig, run_stage, stage_version
from pipeline.run.stage import Stage, Step
from pipeline.stages import STAGES
from pipeline.stages.demonstrations import DemonstrationsConfig
from pipeline.stages.question_clusters import QuestionClustersConfig
from pipeline.stages.skeleton_scores import SkeletonScoresConfig
from pipeline.stages.text_skeletons import TextSkeletonsConfig
from pipeline.stages.video_skeletons import VideoSkeletonsConfig
from pipeline.store.dataset_manifest import write_dataset_manifest
from pipeline.store.schema import (
    CAPTIONS,
    KEYFRAMES,
    MANIFEST_PROBLEMS,
    VIDEOS,
    frame_features_schema,
    text_features_schema,
)
from pipeline.store.storage import Store
from pipeline.store.verify import verify
from pipeline.tags.asking import request_seed

RUNNER = RunnerConfig(rows_per_shard=2, progress=False)
VIDEO_COLOURS = {"v0": "red", "v1": "green", "v2": "blue"}
CAPTION_TEXTS = {"c0": ("v0", "a red square turns"), "c1": ("v0", "something red moves slowly"),
                 "c2": ("v1", "a green field"), "c3": ("v1", "green leaves in the wind"),
                 "c4": ("v2", "blue sky at noon"), "c5": ("v2", "a blue wall")}
TEXT_POOL = ["What key concepts are mentioned in this text?",
             "Which events are occurring, and which entities are involved?", "What objects are named?",
             "What colours are named in the text?", "Where does it happen?"]
VISUAL_POOL = ["What are the important entities in this video?",
               "What are the relationships of these entities in this video?",
               "What colour dominates the frames?", "Where is this video filmed?"]


@dataclass
class _Copy:
    pass


def _copy_setup(config):
    return lambda items: items


def _written(store: Store, name: str, key: str, table: pa.Table):
    """A complete version of `name` holding exactly `table` (written through the runner)."""
    stage = Stage(name=name, description="a test's copy", key=key, inputs=(), config_type=_Copy,
                  schema=table.schema, items=lambda config, inputs: table, steps=(Step("copy", _copy_setup),))
    result = run_stage(store, stage, _Copy(), {}, RUNNER)
    from pipeline.store.version import Version

    return Version(store, name, result.version)


def _jpeg(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), COLOURS[colour]).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _inputs(store: Store) -> dict:
    videos = pa.table({"video_id": list(VIDEO_COLOURS), "path": [None] * 3, "split": ["test"] * 3,
                       "extra": [None] * 3}, schema=VIDEOS)
    captions = pa.table({"caption_id": list(CAPTION_TEXTS), "video_id": [v for v, _ in CAPTION_TEXTS.values()],
                         "text": [t for _, t in CAPTION_TEXTS.values()], "split": ["test"] * 6,
                         "extra": [None] * 6}, schema=CAPTIONS)
    inputs = write_dataset_manifest(store, videos, captions, MANIFEST_PROBLEMS.empty_table(), "/videos",
                                    {"format": "test"}).as_inputs()
    key_images = pa.Table.from_pylist(
        [{"video_id": v, "strategy": "disparity", "frame_indices": list(range(3)), "timestamps": [0.0, 0.5, 1.0],
          "frames": [_jpeg(c)] * 3, "width": 32, "height": 24, "repeated_frames": False, "decoder": "test",
          "note": None} for v, c in VIDEO_COLOURS.items()], schema=KEYFRAMES)
    inputs["key_images"] = _written(store, "key_images", "video_id", key_images)
    # CLIP features planted so that c1's nearest video is v1, not its own v0 (re-ranking fixes it).
    axis = {"v0": [1, 0, 0, 0], "v1": [0, 1, 0, 0], "v2": [0, 0, 1, 0]}
    frames = pa.Table.from_pylist([{"video_id": v, "frame_indices": [0, 1], "timestamps": [0.0, 1.0], "num_frames": 2,
                                    "features": [axis[v], axis[v]]} for v in VIDEO_COLOURS],
                                  schema=frame_features_schema(4))
    text_axis = {**{c: axis[v] for c, (v, _) in CAPTION_TEXTS.items()}, "c1": [0.6, 0.8, 0, 0]}
    texts = pa.Table.from_pylist([{"caption_id": c, "video_id": v, "features": text_axis[c], "truncated": False,
                                   "token_features": None} for c, (v, _) in CAPTION_TEXTS.items()],
                                 schema=text_features_schema(4, 4))
    inputs["frame_features"] = _written(store, "frame_features", "video_id", frames)
    inputs["text_features"] = _written(store, "text_features", "caption_id", texts)
    return inputs


def _pools(folder: Path, text=TEXT_POOL, visual=VISUAL_POOL) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mmi_text_questions.txt").write_text("# a small text pool\n" + "\n".join(text) + "\n")
    (folder / "mmi_visual_questions.txt").write_text("\n".join(visual) + "\n")
    return str(folder)


def _engine(**options) -> PluginEngineConfig:
    return PluginEngineConfig(plugin="mmi_engine:MmiEngine", model="mmi-scripted", options=options)


def _configs(pools: str, tiny_lm: str) -> dict:
    # c3's request for cluster 1 fails; v0's answer for cluster 0 is cut at max_tokens.
    return {
        "question_clusters": QuestionClustersConfig(pools_folder=pools, model=tiny_lm, k=2),
        "demonstrations": DemonstrationsConfig(text_engine=_engine(), visual_engine=_engine(), sample_size=2),
        "text_skeletons": TextSkeletonsConfig(engine=_engine(fail="c3#c01")),
        "video_skeletons": VideoSkeletonsConfig(engine=_engine(cut="v0#c00")),
        "skeleton_scores": SkeletonScoresConfig(engine=_engine(), k=2),
    }


MMI_STAGES = ("question_clusters", "demonstrations", "text_skeletons", "video_skeletons", "skeleton_scores")


def _run(store: Store, inputs: dict, configs: dict) -> dict:
    results = {}
    for name in MMI_STAGES:
        stage = STAGES[name]
        result = run_stage(store, stage, configs[name], {i: inputs[i] for i in stage.inputs}, RUNNER)
        from pipeline.store.version import Version

        inputs[name] = Version(store, name, result.version)
        results[name] = result
    return results


@pytest.fixture(scope="module")
def mmi_run(tmp_path_factory, tiny_lm, ray_session):
    root = tmp_path_factory.mktemp("mmi")
    store = Store.open(str(root / "out"))
    inputs = _inputs(store)
    configs = _configs(_pools(root / "pools"), tiny_lm)
    results = _run(store, inputs, configs)
    return store, inputs, configs, results


def test_question_clusters_rank_every_question_of_both_pools(mmi_run):
    store, inputs, _, results = mmi_run
    rows = inputs["question_clusters"].table().to_pylist()
    assert sorted(r["question_id"] for r in rows) == sorted(
        [f"text/q{i:03d}" for i in range(len(TEXT_POOL))] + [f"visual/q{i:03d}" for i in range(len(VISUAL_POOL))])
    for pool, questions in (("text", TEXT_POOL), ("visual", VISUAL_POOL)):
        mine = [r for r in rows if r["pool"] == pool]
        assert [r["question"] for r in sorted(mine, key=lambda r: r["question_index"])] == questions
        assert {r["k"] for r in mine} == {2} and {r["k_chosen_by"] for r in mine} == {"config"}
        assert next(r for r in mine if r["question_index"] == 0)["cluster"] == 0  # numbered by first question
        assert mine[0]["line"] == (2 if pool == "text" else 1)  # the text pool starts with a comment line
        for cluster in {r["cluster"] for r in mine}:
            members = sorted((r for r in mine if r["cluster"] == cluster), key=lambda r: r["rank"])
            assert [r["rank"] for r in members] == list(range(len(members)))
            assert [r["distance"] for r in members] == sorted(r["distance"] for r in members)
            assert {r["cluster_size"] for r in members} == {len(members)}


def test_each_cluster_gets_the_demonstration_eq7_chooses_among_all_its_candidates(mmi_run):
    store, inputs, configs, _ = mmi_run
    clusters = inputs["question_clusters"].table().to_pylist()
    rows = inputs["demonstrations"].table().to_pylist()
    assert sorted(r["demonstration_id"] for r in rows) == ["text/c00", "text/c01", "visual/c00", "visual/c01"]
    for row in rows:
        members = sorted((c for c in clusters if c["pool"] == row["pool"] and c["cluster"] == row["cluster"]),
                         key=lambda c: c["rank"])
        candidates = row["candidates"]
        # every question of the cluster, nearest the centre first, each answered on the 2 sampled items
        assert [c["question_id"] for c in candidates] == [m["question_id"] for m in members for _ in range(2)]
        assert row["chosen"] == select_demonstration(candidates, configs["demonstrations"].answer_terms)
        best = candidates[row["chosen"]]
        assert (row["question_id"], row["question"], row["answer"], row["item_id"]) == (
            best["question_id"], best["question"], best["answer"], best["item_id"])
        if row["pool"] == "text":
            assert row["item_text"] == CAPTION_TEXTS[row["item_id"]][1] == row["answer"]  # the engine echoes it
        else:
            assert row["item_text"] is None and row["answer"] == VIDEO_COLOURS[row["item_id"]]
        assert all(c["seed"] == request_seed(0, f"{row['demonstration_id']}/{c['question_id']}@{c['item_id']}")
                   for c in candidates)


def test_skeletons_ask_every_cluster_one_shot_and_keep_the_answers_in_cluster_order(mmi_run):
    store, inputs, _, _ = mmi_run
    demonstrations = {r["demonstration_id"]: r for r in inputs["demonstrations"].table().to_pylist()}
    text = {r["caption_id"]: r for r in inputs["text_skeletons"].table().to_pylist()}
    assert sorted(text) == sorted(set(CAPTION_TEXTS) - {"c3"})  # c3: a failed request (below)
    row = text["c2"]
    assert row["clusters"] == [0, 1] and row["video_id"] == "v1"
    assert row["question_ids"] == [demonstrations["text/c00"]["question_id"], demonstrations["text/c01"]["question_id"]]
    assert row["answers"] == ["a green field", "a green field"] and row["skeleton"] == "a green field a green field"
    assert row["seeds"] == [request_seed(0, skeleton_request_id("c2", c)) for c in (0, 1)]
    video = {r["video_id"]: r for r in inputs["video_skeletons"].table().to_pylist()}
    assert sorted(video) == sorted(VIDEO_COLOURS)
    assert video["v2"]["answers"] == ["blue", "blue"] and video["v2"]["finish_reasons"] == ["stop", "stop"]


def test_skeleton_scores_score_each_captions_clip_candidates(mmi_run):
    store, inputs, _, _ = mmi_run
    rows = {r["pair_id"]: r for r in inputs["skeleton_scores"].table().to_pylist()}
    assert len(rows) == 5 * 2  # each caption's top 2 videos by CLIP similarity (c3's failed: no skeleton)
    assert rows["c1|v1"]["candidate_rank"] == 0 and rows["c1|v0"]["candidate_rank"] == 1  # planted: CLIP is wrong
    assert rows["c1|v0"]["score"] == pytest.approx(0.9) and rows["c1|v1"]["score"] == pytest.approx(0.1)
    assert rows["c1|v0"]["raw_output"] == "Probability: 0.9" and rows["c1|v0"]["candidates"] == "clip"
    assert rows["c0|v0"]["similarity"] == pytest.approx(1.0, abs=1e-3)


def test_every_mmi_output_verifies_clean(mmi_run):
    store, _, _, _ = mmi_run
    report = verify(store.root, schemas={name: STAGES[name].schema for name in MMI_STAGES})
    assert report.ok, report.render()


def test_a_failed_request_fails_its_item_and_a_cut_answer_keeps_its_row(mmi_run):
    store, inputs, _, _ = mmi_run
    failures = {f["item_id"]: f for f in inputs["text_skeletons"].failures().to_pylist()}
    assert list(failures) == ["c3"] and failures["c3"]["reason"] == "generation_error"
    assert "cluster 1" in failures["c3"]["message"] and "500" in failures["c3"]["message"]
    cut = next(r for r in inputs["video_skeletons"].table().to_pylist() if r["video_id"] == "v0")
    assert cut["finish_reasons"] == ["length", "stop"] and cut["answers"][0] == "red and then"
    # c3's candidates are v1 and then v0 (a tie with v2 goes to the lower id); without its skeleton
    # neither pair can be scored
    scores = {f["item_id"]: f for f in inputs["skeleton_scores"].failures().to_pylist()}
    assert set(scores) == {"c3|v1", "c3|v0"} and {f["reason"] for f in scores.values()} == {"upstream_failed"}


def test_editing_one_question_gives_new_versions_from_question_clusters_on_only(tmp_path, tiny_lm):
    store = Store.open(str(tmp_path / "out"))
    from pipeline.store.version import Version

    def versions(pools: str) -> dict:
        found = {name: Version(store, name, f"fixed-{name}") for name in
                 ("videos", "captions", "key_images", "text_features", "frame_features")}
        configs = _configs(pools, tiny_lm)
        for name in MMI_STAGES:
            stage = STAGES[name]
            found[name] = Version(store, name, stage_version(stage, configs[name], {i: found[i] for i in stage.inputs}))
        return {name: v.version for name, v in found.items()}

    before = versions(_pools(tmp_path / "a"))
    edited = list(TEXT_POOL)
    edited[3] = "Which colours does the text name?"
    after = versions(_pools(tmp_path / "b", text=edited))
    assert {name for name in before if before[name] != after[name]} == set(MMI_STAGES)
    assert versions(_pools(tmp_path / "a")) == before  # the pools as they were: the versions as they were



def _fake_processor(config, to_request, *, keep=(), chat=True, multimodal=False, **overrides):
    """`VllmEngine.processor` without vLLM: each row's request answered "answer <request id>" (or
    an error row for an id holding "#c01" of c4), carrying the `keep` columns, as the real one does."""
    from dataclasses import asdict

    from pipeline.engines.base import GenerationResult

    def answer(row: dict) -> dict:
        request = to_request(row)
        failed = request.id == "c4#c01"
        result = GenerationResult(request.id, "" if failed else f"answer {request.id}", "error" if failed else "stop",
                                  error="engine died" if failed else None)
        return {**asdict(result), **{name: row[name] for name in keep}}

    return lambda dataset: dataset.map(answer)


def test_skeletons_through_ray_data_llm_spread_per_cluster_and_gather_per_item(mmi_run, tiny_lm, monkeypatch):
    from pipeline.engines.config import VllmEngineConfig
    from pipeline.engines.vllm_engine import VllmEngine
    from pipeline.store.version import Version

    monkeypatch.setattr(VllmEngine, "processor", classmethod(lambda cls, *a, **k: _fake_processor(*a, **k)))
    store, inputs, _, _ = mmi_run
    config = TextSkeletonsConfig(engine=VllmEngineConfig(model=tiny_lm))
    stage = STAGES["text_skeletons"]
    result = run_stage(store, stage, config, {i: inputs[i] for i in stage.inputs}, RUNNER)
    version = Version(store, "text_skeletons", result.version)
    rows = {r["caption_id"]: r for r in version.table().to_pylist()}
    assert sorted(rows) == ["c0", "c1", "c2", "c3", "c5"]
    assert rows["c2"]["answers"] == ["answer c2#c00", "answer c2#c01"] and rows["c2"]["video_id"] == "v1"
    assert rows["c2"]["skeleton"] == "answer c2#c00 answer c2#c01"
    failures = version.failures().to_pylist()
    assert [(f["item_id"], f["reason"]) for f in failures] == [("c4", "generation_error")]
    assert "cluster 1" in failures[0]["message"] and "engine died" in failures[0]["message"]


def test_stats_report_each_pools_clusters_demonstrations_and_the_score_distribution(mmi_run):
    from pipeline.mmi.stats import format_mmi_statistics, mmi_statistics

    store, inputs, _, _ = mmi_run
    pools, scores = mmi_statistics(store.root)
    demonstrations = {(r["pool"], r["cluster"]): r for r in inputs["demonstrations"].table().to_pylist()}
    assert [p.pool for p in pools] == ["text", "visual"]
    for pool, size in zip(pools, (len(TEXT_POOL), len(VISUAL_POOL))):
        assert (pool.questions, pool.k, pool.k_chosen_by) == (size, 2, "config")
        assert sum(c.size for c in pool.clusters) == size
        for c in pool.clusters:
            demo = demonstrations[(pool.pool, c.cluster)]
            assert (c.representative, c.answer, c.item_id) == (demo["question"], demo["answer"], demo["item_id"])
    # each caption's own video answers 0.9, the other candidate 0.1 (tests/mmi_engine.py)
    assert (scores.pairs, scores.scored) == (10, 10)
    assert scores.histogram[1] == 5 and scores.histogram[9] == 5 and sum(scores.histogram) == 10
    assert scores.quantiles["min"] == pytest.approx(0.1) and scores.quantiles["max"] == pytest.approx(0.9)
    printed = format_mmi_statistics(pools, scores)
    assert "text question pool: 5 questions, k = 2 (chosen by config)" in printed
    assert "skeleton scores: 10 pairs, 10 with a probability, 0 without" in printed


def test_splits_limit_which_items_get_skeletons(mmi_run):
    _, inputs, _, _ = mmi_run
    text, video = STAGES["text_skeletons"], STAGES["video_skeletons"]
    assert text.items(TextSkeletonsConfig(splits=["train"]), inputs).num_rows == 0
    assert text.items(TextSkeletonsConfig(splits=["train", "test"]), inputs).num_rows == 6
    videos = video.items(VideoSkeletonsConfig(splits=["test"]), inputs).column("video_id").to_pylist()
    assert videos == ["v0", "v1", "v2"]
    assert video.items(VideoSkeletonsConfig(splits=["val"]), inputs).num_rows == 0


def test_candidates_from_a_topk_file_take_each_captions_first_k_of_the_split(mmi_run, tmp_path):
    import pyarrow.parquet as pq

    from pipeline.config import ConfigError
    from pipeline.store.schema import TOPK

    _, inputs, _, _ = mmi_run
    rows = [{"caption_id": c, "video_id": v, "rank": r, "similarity": 1.0 - r / 10}
            for c in ("c0", "c1", "elsewhere") for r, v in enumerate(("v2", "v0", "v1"))]
    pq.write_table(pa.Table.from_pylist(rows, schema=TOPK), tmp_path / "topk.parquet")
    stage = STAGES["skeleton_scores"]
    config = SkeletonScoresConfig(engine=_engine(), candidates=str(tmp_path / "topk.parquet"), k=2)
    items = stage.items(config, inputs).to_pylist()
    assert [(i["caption_id"], i["video_id"], i["candidate_rank"]) for i in items] == [
        ("c0", "v2", 0), ("c0", "v0", 1), ("c1", "v2", 0), ("c1", "v0", 1)]  # "elsewhere" is in no split
    assert items[1]["similarity"] == pytest.approx(0.9) and items[0]["candidates"].startswith("topk:")
    identity = stage.identity(config)
    pq.write_table(pa.Table.from_pylist(rows[:3], schema=TOPK), tmp_path / "topk.parquet")
    assert stage.identity(config)["candidates_sha256"] != identity["candidates_sha256"]  # a new file, a new version
    pq.write_table(pa.table({"caption_id": ["c0"]}), tmp_path / "other.parquet")
    with pytest.raises(ConfigError, match="not a top-K file"):
        stage.items(SkeletonScoresConfig(candidates=str(tmp_path / "other.parquet")), inputs)
    with pytest.raises(ConfigError, match="no such file"):
        stage.check(SkeletonScoresConfig(candidates=str(tmp_path / "missing.parquet")))


def test_stats_never_show_demonstrations_of_other_clusters(mmi_run, tiny_lm, tmp_path):
    # (last in the module: it moves question_clusters' LATEST)
    from pipeline.mmi.stats import mmi_statistics

    store, inputs, _, _ = mmi_run
    config = QuestionClustersConfig(pools_folder=_pools(tmp_path / "edited", text=TEXT_POOL[:4]), model=tiny_lm, k=2)
    run_stage(store, STAGES["question_clusters"], config, {}, RUNNER)
    pools, _ = mmi_statistics(store.root)
    assert pools[0].questions == 4  # the new LATEST clusters
    # demonstrations' LATEST was made from the old clusters: its choices are not shown for the new ones
    assert all(c.representative is None and c.answer is None for p in pools for c in p.clusters)
