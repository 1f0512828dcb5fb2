"""MMI-TVR's knowledge in the trainer: Eq. 10 re-ranking, the top-K candidates file, skeletons as
the macvr head's auxiliary text.

The re-ranking is checked on hand-made matrices; the rest end to end on a tiny OUT folder whose
outputs (manifest, frame features, skeletons, skeleton scores) are written through the store's
`Version` protocol directly (one shard each, no Ray), and a meanpool head trained one epoch on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import config as config_lib
from pipeline.cli import main
from pipeline.config import ConfigError
from pipeline.mmi.rerank import RerankStats, candidates_from_pairs, count_pairs, rerank, top_k_table
from pipeline.store.dataset_manifest import write_dataset_manifest
from pipeline.store.schema import (
    CAPTIONS,
    FAILURES,
    MANIFEST_PROBLEMS,
    SKELETON_SCORES,
    TEXT_SKELETONS,
    TOPK,
    VIDEO_SKELETONS,
    VIDEOS,
    frame_features_schema,
)
from pipeline.store.storage import Store
from pipeline.store.version import InputNotReadyError, Version, now, provenance_metadata, version_of
from pipeline.train import loop
from pipeline.train.config import RerankOptions, TrainConfig
from pipeline.train.data import load_splits
from pipeline.train.loop import evaluate_checkpoint, run_training
from pipeline.train.metrics import retrieval_metrics

# ---- Eq. 10 on hand-made matrices --------------------------------------------------------------------


def test_a_scored_candidate_with_a_high_p_moves_up_only_within_the_candidate_slots():
    sim = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    # Videos 1 and 3 are candidates, in places 1 and 3 of the ranking; 3 has the high p.
    out = rerank(sim, {0: [(1, 0.0), (3, 1.0)]})  # 0.6*0.8 = 0.48 < 0.6*0.6 + 0.3 = 0.66
    assert out.tolist() == [[0.9, 0.6, 0.7, 0.8, 0.5]]  # 3 takes place 1, 1 takes place 3; 0, 2, 4 stay
    assert sim.tolist() == [[0.9, 0.8, 0.7, 0.6, 0.5]]  # the input is not modified
    # p not high enough to overcome the similarity gap: nothing moves (0.6*0.6 + 0.3*0.4 = 0.48 = 0.6*0.8 + 0).
    assert rerank(sim, {0: [(1, 0.0), (3, 0.3)]}).tolist() == sim.tolist()


def test_unscored_videos_keep_their_places_and_candidates_swap_values_among_their_own():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(20, 30)).astype(np.float32)
    candidates = {row: [(int(c), float(rng.random())) for c in rng.choice(30, 6, replace=False)]
                  for row in range(0, 20, 2)}
    out = rerank(sim, candidates)
    assert out.dtype == np.float32  # the values are sim's own, permuted
    for row in range(20):
        columns = [c for c, _ in candidates.get(row, [])]
        others = np.setdiff1d(np.arange(30), columns)
        assert np.array_equal(out[row, others], sim[row, others])
        assert sorted(out[row, columns]) == sorted(sim[row, columns])
        # the set of places the candidates hold in the row's ranking is unchanged
        places = lambda s: set(np.nonzero(np.isin(np.argsort(-s, kind="stable"), columns))[0])  # noqa: E731
        assert places(out[row]) == places(sim[row])
    # Among the candidates, the order is Eq. 10's.
    row = 0
    columns = [c for c, _ in candidates[row]]
    joint = [0.6 * sim[row, c] + 0.3 * p for c, p in candidates[row]]
    assert [columns[i] for i in np.argsort(joint)[::-1]] == [columns[i] for i in np.argsort(-out[row, columns])]


def test_lambda_s_zero_leaves_the_order_and_lambda_r_zero_orders_by_p():
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(5, 8))
    candidates = {row: [(c, float(rng.random())) for c in range(8)] for row in range(5)}
    assert np.array_equal(rerank(sim, candidates, lambda_s=0.0), sim)
    by_p = rerank(sim, candidates, lambda_r=0.0, lambda_s=1.0)
    for row, pairs in candidates.items():
        assert np.argsort(-by_p[row]).tolist() == np.argsort([-p for _, p in pairs]).tolist()


def test_a_candidate_without_a_score_is_left_where_it_is():
    sim = np.array([[0.9, 0.8, 0.7, 0.6]])
    out = rerank(sim, {0: [(0, None), (1, 0.0), (2, None), (3, 1.0)]})
    assert out.tolist() == [[0.9, 0.6, 0.7, 0.8]]  # 0 and 2 unscored: stay; 1 and 3 swap
    assert rerank(sim, {0: [(0, None), (3, 1.0)]}).tolist() == sim.tolist()  # one scored: no other place


def test_ties_keep_the_order_of_the_ranking():
    sim = np.array([[0.5, 0.25, 0.0]])
    # Equal Eq. 10 values (1 * 0.5 + 0.25 = 1 * 0.25 + 0.5): the better-placed one stays first.
    assert rerank(sim, {0: [(1, 0.5), (0, 0.25)]}, 1.0, 1.0).tolist() == sim.tolist()
    # Equal similarities: the ranking holds them by column, and equal p keeps that.
    tied = np.array([[0.5, 0.5, 0.5]])
    assert rerank(tied, {0: [(2, 0.1), (0, 0.1)]}).tolist() == tied.tolist()


def test_bad_candidates_and_weights_are_refused():
    sim = np.zeros((2, 3))
    for candidates, message in (({0: [(1, 0.5), (1, 0.2)]}, "twice"), ({0: [(3, 0.5)]}, "outside sim's 3 videos"),
                                ({2: [(0, 0.5)]}, "outside sim's 2 caption rows"),
                                ({0: [(0, float("nan")), (1, 0.1)]}, "not a number")):
        with pytest.raises(ValueError, match=message):
            rerank(sim, candidates)
    with pytest.raises(ValueError, match="lambda_s must be"):
        rerank(sim, {}, lambda_s=-0.1)


def test_rerank_improves_r1_when_p_is_informative_and_changes_nothing_when_it_is_not():
    # 50 captions x 50 videos; each caption's own video is somewhere in its top 5 by similarity,
    # but rarely first; the LVLM's p is high for the caption's own video.
    rng = np.random.default_rng(2)
    n = 50
    sim = rng.uniform(0.0, 0.5, size=(n, n))
    for i in range(n):
        place = rng.integers(0, 5)
        others = np.argsort(-np.where(np.arange(n) == i, -1, sim[i]))[:5]
        top = np.sort(rng.uniform(0.6, 0.9, size=5))[::-1]
        sim[i, others[:4]] = np.delete(top, place)  # four others among the top 5
        sim[i, i] = top[place]
    top5 = np.argsort(-sim, axis=1)[:, :5]
    informative = {i: [(int(c), 0.9 if c == i else 0.1) for c in top5[i]] for i in range(n)}
    flat = {i: [(int(c), 0.5) for c in top5[i]] for i in range(n)}
    plain = retrieval_metrics(sim)
    assert 5 < plain["R1"] < 40 and plain["R5"] == 100.0
    reranked = retrieval_metrics(rerank(sim, informative))
    assert reranked["R1"] == 100.0 and reranked["R5"] == 100.0  # every own video moved up to place 1
    assert retrieval_metrics(rerank(sim, flat)) == plain
    # Misleading p (high for a wrong video) can only cost places inside the top 5.
    misleading = {i: [(int(c), 0.1 if c == i else 0.9) for c in top5[i]] for i in range(n)}
    worse = retrieval_metrics(rerank(sim, misleading))
    assert worse["R1"] < plain["R1"] and worse["R5"] == 100.0


def test_pairs_map_to_the_split_and_those_outside_are_counted():
    pairs = pa.table({"caption_id": ["c0", "c1", "c1", "cx", "c0"], "video_id": ["v1", "v0", "v1", "v0", "vx"],
                      "score": [0.5, None, 0.2, 0.9, 0.1]})
    candidates, stats = candidates_from_pairs(pairs, ["c0", "c1"], ["v0", "v1"])
    assert candidates == {0: [(1, 0.5)], 1: [(0, None), (1, 0.2)]}
    assert stats == RerankStats(captions=2, pairs=3, scored=2, unscored=1, outside=2)
    assert count_pairs({}) == RerankStats(0, 0, 0, 0, 0)


def test_top_k_follows_the_similarity_matrix():
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(6, 9)).astype(np.float32)
    sim[2, [1, 4]] = 5.0  # a tie at the top: the lower column first
    captions, videos = [f"c{i}" for i in range(6)], [f"v{j}" for j in range(9)]
    table = top_k_table(sim, captions, videos, 3)
    assert table.schema == TOPK and table.num_rows == 18
    rows = table.to_pylist()
    for i in range(6):
        mine = [r for r in rows if r["caption_id"] == f"c{i}"]
        assert [r["rank"] for r in mine] == [0, 1, 2]
        expected = np.argsort(-sim[i], kind="stable")[:3]
        assert [r["video_id"] for r in mine] == [f"v{j}" for j in expected]
        assert [r["similarity"] for r in mine] == [float(sim[i, j]) for j in expected]
        assert all(float(sim[i, j]) <= mine[-1]["similarity"] for j in range(9) if j not in expected)
    assert [r["video_id"] for r in rows if r["caption_id"] == "c2"][:2] == ["v1", "v4"]
    assert top_k_table(sim, captions, videos, 50).num_rows == 6 * 9  # more than there are: every video


# ---- a tiny OUT folder, written through the version protocol ----------------------------------------------

TRAIN_VIDEOS, TEST_VIDEOS, FRAMES = 16, 16, 3


def _commit(out: Path, stage: str, table: pa.Table, key: str, config: dict | None = None) -> Version:
    """`table` as one complete, committed shard of a new `stage` version, LATEST pointed at it."""
    store = Store.open(str(out))
    identity = {"stage": stage, "config": config or {}, "rows": table.num_rows}
    output = Version(store, stage, version_of(identity))
    manifest = {"stage": stage, "version": output.version, "identity": identity, "key": key, "created": now(),
                "num_items": table.num_rows, "rows_per_shard": table.num_rows, "num_shards": 1, "complete": False}
    output.write_plan(table.column(key).combine_chunks(), table.num_rows, manifest)
    output.write_manifest(manifest)
    metadata = provenance_metadata({**identity, "version": output.version}, {})
    output.commit_shard(0, output.stage_shard(0, table, FAILURES.empty_table(), metadata))
    output.clear_staging()
    output.write_manifest({**manifest, "complete": True, "finished": now(), "rows": table.num_rows, "failures": 0})
    output.mark_latest()
    return output


def _write_out(out: Path, model: str) -> None:
    """Train videos with two captions, test videos with one; random frame features from `model`."""
    from pipeline.models.clip import embedding_dim

    videos = [(f"video{i}", "train" if i < TRAIN_VIDEOS else "test") for i in range(TRAIN_VIDEOS + TEST_VIDEOS)]
    captions = [(f"{v}#{k}", v, f"caption {k} of {v}", split) for v, split in videos
                for k in range(2 if split == "train" else 1)]
    (out / "videos").mkdir(parents=True)
    write_dataset_manifest(
        Store.open(str(out)),
        pa.table({"video_id": [v for v, _ in videos], "path": [f"{v}.mp4" for v, _ in videos],
                  "split": [s for _, s in videos], "extra": [None] * len(videos)}, schema=VIDEOS),
        pa.table({"caption_id": [c[0] for c in captions], "video_id": [c[1] for c in captions],
                  "text": [c[2] for c in captions], "split": [c[3] for c in captions],
                  "extra": [None] * len(captions)}, schema=CAPTIONS),
        MANIFEST_PROBLEMS.empty_table(), str(out / "videos"), {"format": "test"})
    dim = embedding_dim(model, None)
    flat = np.random.default_rng(4).normal(size=(len(videos) * FRAMES * dim)).astype(np.float16)
    frames = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
    features = pa.ListArray.from_arrays(pa.array(np.arange(len(videos) + 1, dtype=np.int32) * FRAMES), frames)
    _commit(out, "frame_features", pa.table({
        "video_id": [v for v, _ in videos], "frame_indices": [list(range(FRAMES))] * len(videos),
        "timestamps": [[0.5 * k for k in range(FRAMES)]] * len(videos), "num_frames": [FRAMES] * len(videos),
        "features": features}, schema=frame_features_schema(dim)), "video_id", {"model": model, "revision": None})


def _skeletons(key: str, skeletons: dict[str, str]) -> pa.Table:
    ids = sorted(skeletons)
    n = len(ids)
    keys = {"caption_id": ids, "video_id": [i.split("#")[0] for i in ids]} if key == "caption_id" else {"video_id": ids}
    return pa.table({**keys, "clusters": [[0]] * n, "question_ids": [["text/q000"]] * n,
                     "answers": [[skeletons[i]] for i in ids], "finish_reasons": [["stop"]] * n, "seeds": [[0]] * n,
                     "skeleton": [skeletons[i] for i in ids], "model": ["planted"] * n, "revision": [None] * n,
                     "prompt": ["planted"] * n, "prompt_sha256": ["0" * 64] * n, "prompt_tokens": [0] * n,
                     "output_tokens": [0] * n},
                    schema=TEXT_SKELETONS if key == "caption_id" else VIDEO_SKELETONS)


def _scores(pairs: list[tuple[str, str, float | None]], candidates: str) -> pa.Table:
    n = len(pairs)
    return pa.table({"pair_id": [f"{c}|{v}" for c, v, _ in pairs], "caption_id": [c for c, _, _ in pairs],
                     "video_id": [v for _, v, _ in pairs], "candidate_rank": [0] * n, "similarity": [0.0] * n,
                     "candidates": [candidates] * n, "score": [p for _, _, p in pairs],
                     "raw_output": [""] * n, "finish_reason": ["stop"] * n, "seed": [0] * n, "model": ["planted"] * n,
                     "revision": [None] * n, "prompt": ["planted"] * n, "prompt_sha256": ["0" * 64] * n,
                     "prompt_tokens": [0] * n, "output_tokens": [0] * n}, schema=SKELETON_SCORES)


def _config(out: Path, output_dir: Path, *overrides: str) -> TrainConfig:
    return config_lib.build(TrainConfig, config_lib.apply_overrides({
        "data": {"out": str(out), "num_frames": FRAMES},
        "model": {"head": "meanpool"},
        "optim": {"epochs": 1, "batch_size": 16, "lr": 0.01, "weight_decay": 0.0},
        "eval": {"querybank_size": 8},
        "device": "cpu", "progress": False, "output_dir": str(output_dir),
    }, list(overrides), TrainConfig))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip) -> tuple[Path, Path]:
    """(OUT, the training output folder) of a meanpool head trained one epoch on a tiny OUT."""
    root = tmp_path_factory.mktemp("mmi-rerank")
    out = root / "out"
    _write_out(out, tiny_clip)
    run_training(_config(out, root / "train"))
    return out, root / "train"


# ---- --write-topk and --rerank end to end ---------------------------------------------------------------


def _capture_similarity(monkeypatch) -> dict:
    """Keep the plain test similarity the next evaluation computes."""
    captured = {}
    original = loop.evaluate_with_similarity

    def keep(*args):
        captured["metrics"], captured["sim"] = original(*args)
        return captured["metrics"], captured["sim"]

    monkeypatch.setattr(loop, "evaluate_with_similarity", keep)
    return captured


def test_write_topk_writes_each_test_caption_s_best_videos_by_the_plain_similarity(trained, monkeypatch, capsys):
    _, run = trained
    captured = _capture_similarity(monkeypatch)
    assert main(["eval", str(run), "--write-topk", "4"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {run / 'topk.parquet'}" in printed and "64 rows" in printed
    table = pq.read_table(run / "topk.parquet")
    assert table.schema.remove_metadata() == TOPK and b"tvr.topk" in table.schema.metadata
    assert not list(run.glob(".topk*"))  # the temporary file was renamed over
    provenance = json.loads(table.schema.metadata[b"tvr.topk"])
    assert (provenance["k"], provenance["head"], provenance["epoch"]) == (4, "meanpool", 1)
    assert str(run) not in json.dumps(provenance)  # no path: the bytes do not change when the run moves
    sim = captured["sim"].numpy()
    test_captions = [f"video{i}#0" for i in range(TRAIN_VIDEOS, TRAIN_VIDEOS + TEST_VIDEOS)]  # rows, as sorted
    rows = table.to_pylist()
    for i, caption in enumerate(test_captions):
        mine = [r for r in rows if r["caption_id"] == caption]
        best = np.argsort(-sim[i], kind="stable")[:4]
        assert [r["rank"] for r in mine] == [0, 1, 2, 3]
        assert [r["video_id"] for r in mine] == [f"video{TRAIN_VIDEOS + j}" for j in best]
        assert [r["similarity"] for r in mine] == [float(sim[i, j]) for j in best]
    # Consistent with the metrics printed: R@1 is the share of captions whose own video is first.
    own_first = np.mean([r["video_id"] == r["caption_id"].split("#")[0] for r in rows if r["rank"] == 0])
    assert captured["metrics"]["t2v"]["none"]["R1"] == pytest.approx(100 * own_first)
    elsewhere = run.parent / "elsewhere" / "cands.parquet"
    assert main(["eval", str(run), "--write-topk", "100", "--topk-out", str(elsewhere)]) == 0
    assert "the 16 most similar test videos" in capsys.readouterr().out
    assert pq.read_table(elsewhere).num_rows == TEST_VIDEOS * TEST_VIDEOS  # K capped at the test videos


def test_eval_rerank_end_to_end(trained, monkeypatch, capsys):
    out, run = trained
    plain = evaluate_checkpoint(run, topk=5)
    candidates = pq.read_table(plain["topk"]["path"]).to_pylist()
    # The LVLM knows: p = 0.9 for a caption's own video, 0.1 for the others; one pair has no score,
    # and two pairs fall outside the test split (a training caption, a training video).
    own = {r["caption_id"]: r["caption_id"].split("#")[0] for r in candidates}
    pairs = [(r["caption_id"], r["video_id"], 0.9 if r["video_id"] == own[r["caption_id"]] else 0.1)
             for r in candidates]
    # No score for one pair of a caption whose own video is not a candidate (so nothing it blocks).
    without_own = sorted(c for c in own if (c, own[c], 0.9) not in pairs)
    unscored = next(i for i, (c, _, _) in enumerate(pairs) if c == without_own[0])
    pairs[unscored] = (*pairs[unscored][:2], None)
    pairs += [("video0#0", "video0", 0.9), ("video20#0", "video1", 0.9)]
    version = _commit(out, "skeleton_scores", _scores(pairs, "topk:planted"), "pair_id")

    result = evaluate_checkpoint(run, rerank=RerankOptions(str(out)))
    assert {name: m for name, m in result["t2v"].items() if name != "none+rerank"} == plain["t2v"]
    assert result["v2t"] == plain["v2t"]  # text-to-video only
    # Independently: a caption's own video ends first when it is a candidate whose Eq. 10 value
    # beats every other candidate's (all above the rest of the ranking already).
    joint = {(r["caption_id"], r["video_id"]): 0.6 * r["similarity"] + 0.3 * p
             for r, (_, _, p) in zip(candidates, pairs) if p is not None}
    first = [(c, own[c]) in joint and all(joint[(c, own[c])] > value for (c2, v), value in joint.items()
                                          if c2 == c and v != own[c]) for c in own]
    assert result["t2v"]["none+rerank"]["R1"] == pytest.approx(100 * np.mean(first))
    assert result["t2v"]["none+rerank"]["R1"] > plain["t2v"]["none"]["R1"]
    assert result["t2v"]["none+rerank"]["R5"] == plain["t2v"]["none"]["R5"]  # moves happen inside the top 5
    assert result["rerank"] == {"version": version.version, "lambda_r": 0.6, "lambda_s": 0.3,
                                "candidates": ["topk:planted"], "captions": TEST_VIDEOS, "pairs": 5 * TEST_VIDEOS,
                                "scored": 5 * TEST_VIDEOS - 1, "unscored": 1, "outside": 2}
    # lambda_s = 0: the re-ranked row is the plain one.
    same = evaluate_checkpoint(run, rerank=RerankOptions(str(out), version.version, lambda_s=0.0))
    assert same["t2v"]["none+rerank"] == plain["t2v"]["none"]

    assert main(["eval", str(run), "--rerank", str(out)]) == 0
    printed = capsys.readouterr().out
    assert len({line.index(" R@1") for line in printed.splitlines() if " R@1 " in line}) == 1  # one column
    lines = {line.split(" R@1")[0].strip(): line for line in printed.splitlines()}
    assert f"R@1 {result['t2v']['none+rerank']['R1']:5.1f}" in lines["t2v none+rerank"]
    assert "v2t none+rerank" not in lines
    note = next(line for line in lines.values() if line.startswith("none+rerank: "))
    assert "lambda_r 0.6, lambda_s 0.3" in note and f"skeleton_scores {version.version}" in note
    assert "80 pairs of 16 test captions, 79 scored, 1 without a score" in note
    assert "2 outside the test split (ignored)" in note
    # The flags reach the re-ranking: lambda_s 0 gives the plain row back.
    assert main(["eval", str(run), "--rerank", str(out), "--scores-version", version.version, "--lambda-s", "0"]) == 0
    lines = {line.split(" R@1")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert lines["t2v none+rerank"].split(" R@1")[1] == lines["t2v none"].split(" R@1")[1]


def test_metrics_without_rows_format_to_nothing():
    assert loop.format_metrics({"t2v": {}, "v2t": {}}) == ""  # what read_checkpoint checks a resumed state with


def test_eval_rerank_errors_are_one_line(trained, tmp_path, capsys):
    _, run = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", str(run), "--rerank", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no skeleton_scores in" in err
    assert "tvr run CONFIG --stages skeleton_scores" in err and "--write-topk K" in err
    assert main(["eval", str(run), "--rerank", str(empty), "--scores-version", "nope"]) == 2
    assert "no complete skeleton_scores version nope" in capsys.readouterr().err
    assert main(["eval", str(run), "--lambda-s", "0.5"]) == 2
    assert "--lambda-s apply to a re-ranking: add --rerank OUT" in capsys.readouterr().err
    assert main(["eval", str(run), "--rerank", str(empty), "--lambda-r", "-1"]) == 2
    assert "lambda_r=-1.0 is out of range" in capsys.readouterr().err
    assert main(["eval", str(run), "--topk-out", str(tmp_path / "x.parquet")]) == 2
    assert main(["eval", str(run), "--write-topk", "0"]) == 2
    assert "K >= 1" in capsys.readouterr().err


# ---- skeletons as the macvr head's auxiliary text ------------------------------------------------------------


MACVR_SKELETONS = ("model.head=macvr", "model.concepts=2", "model.frame_layers=0", "model.confidence_hidden=8",
                   "data.tags=true", "data.aux=skeletons")


def test_skeletons_are_the_aux_text_and_items_without_one_get_an_empty_text(trained, tmp_path):
    out, _ = trained
    with pytest.raises(InputNotReadyError, match=r"no video_skeletons in .*tvr run CONFIG --stages video_skeletons"):
        load_splits(_config(out, tmp_path, *MACVR_SKELETONS).data)
    videos = {f"video{i}": f"a scene of video {i}" for i in range(1, TRAIN_VIDEOS + TEST_VIDEOS)}  # video0: none
    texts = {f"video{i}#0": f"the words of video {i}" for i in range(TRAIN_VIDEOS + TEST_VIDEOS - 1)}  # last: none
    video_version = _commit(out, "video_skeletons", _skeletons("video_id", videos), "video_id")
    with pytest.raises(InputNotReadyError, match=r"no text_skeletons in .*text_skeletons`, or set data.aux=tags"):
        load_splits(_config(out, tmp_path, *MACVR_SKELETONS).data)
    text_version = _commit(out, "text_skeletons", _skeletons("caption_id", texts), "caption_id")

    train, test, checkpoint = load_splits(_config(out, tmp_path, *MACVR_SKELETONS).data)
    assert checkpoint["versions"]["video_skeletons"] == video_version.version
    assert checkpoint["versions"]["text_skeletons"] == text_version.version
    rows = [0, 1, 2]  # video0#0, video0#1, video1#0
    assert train.caption_ids[:3] == ["video0#0", "video0#1", "video1#0"]
    aux = train.aux_texts(rows, epoch=0, seed=0)
    assert aux == {"visual": ["", "", "a scene of video 1"],
                   "textual": ["the words of video 0", "", "the words of video 1"]}
    assert train.aux_texts(rows, epoch=None) == aux  # no sampling: a skeleton is read whole
    last = len(test) - 1
    assert test.aux_texts([last], epoch=None)["textual"] == [""]
    assert test.video_aux_texts([0, 1]) == [f"a scene of video {TRAIN_VIDEOS}", f"a scene of video {TRAIN_VIDEOS + 1}"]
    # The tags path is untouched: without aux=skeletons the tag stages are what is missing.
    with pytest.raises(InputNotReadyError, match="no visual_tags in"):
        load_splits(_config(out, tmp_path, *MACVR_SKELETONS[:-1]).data)
    # A pinned version is read; an unknown one is an error naming it.
    pinned = _config(out, tmp_path, *MACVR_SKELETONS,
                     f"data.versions.text_skeletons='{text_version.version}'")
    assert load_splits(pinned.data)[2]["versions"]["text_skeletons"] == text_version.version
    with pytest.raises(InputNotReadyError, match="no complete text_skeletons version nope"):
        load_splits(_config(out, tmp_path, *MACVR_SKELETONS,
                            "data.versions.text_skeletons=nope").data)

    # macvr trains on them, and its checkpoint evaluates to the numbers it recorded.
    config = _config(out, tmp_path / "macvr", *MACVR_SKELETONS)
    metrics = run_training(config)
    assert evaluate_checkpoint(tmp_path / "macvr")["t2v"] == metrics["t2v"]
    saved = yaml.safe_load((tmp_path / "macvr" / "config.yaml").read_text())
    assert saved["data"]["aux"] == "skeletons"


def test_aux_skeletons_without_tags_is_refused(trained, tmp_path):
    out, _ = trained
    with pytest.raises(ConfigError, match="aux is skeletons, but tags is false"):
        _config(out, tmp_path, "model.head=macvr", "data.aux=skeletons")
    with pytest.raises(ConfigError, match="data.aux"):
        _config(out, tmp_path, "data.aux=tag")


def test_a_run_saved_before_data_aux_existed_still_resumes(trained, tmp_path):
    out, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    del saved["data"]["aux"]  # as a run saved before the key existed
    saved["output_dir"] = str(copy)
    (copy / "config.yaml").write_text(yaml.safe_dump(saved))
    assert run_training(_config(out, copy))["epoch"] == 1  # finished: its metrics back, nothing trained
    with pytest.raises(ConfigError, match=r"holds another run \(its config differs in data.aux, data.tags"):
        run_training(_config(out, copy, *MACVR_SKELETONS))
