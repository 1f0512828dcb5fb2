"""Retrieval metrics, dual softmax and QB-Norm against hand-computed matrices.

Each expected value is worked out in the comments from the formulas in REFERENCE.md
("Retrieval metrics", "Dual softmax, DSL", "QB-Norm with dynamic inverted softmax").
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.train.inference import dual_softmax, qb_norm
from pipeline.train.metrics import retrieval_metrics, video_to_text_metrics

# ---- retrieval metrics ---------------------------------------------------------------------------

# Square, one caption per video, g(i) = i. rank = 1 + #above + #tied-others / 2:
#   row 0: 0.9 is the best                                   -> 1
#   row 1: 0.4 tied with two others                          -> 1 + 0 + 2/2 = 2
#   row 2: 0.6 below 0.8 and 0.7, tied with one              -> 1 + 2 + 1/2 = 3.5
#   row 3: 0.1 below three                                   -> 4
# ranks [1, 2, 3.5, 4]: R1 = 25, R5 = R10 = 100, MdR = (2 + 3.5)/2 = 2.75, MnR = 10.5/4 = 2.625.
TIES = [
    [0.9, 0.1, 0.2, 0.3],
    [0.4, 0.4, 0.4, 0.0],
    [0.8, 0.7, 0.6, 0.6],
    [0.5, 0.5, 0.5, 0.1],
]

# 5 texts x 4 videos; texts 0,1 -> video 0, text 2 -> video 1, texts 3,4 -> video 2; video 3 has
# no caption (a distractor column for text-to-video, left out of video-to-text).
CAPTIONS = [
    [0.9, 0.5, 0.1, 0.95],
    [0.2, 0.6, 0.3, 0.0],
    [0.4, 0.4, 0.1, 0.4],
    [0.1, 0.2, 0.8, 0.3],
    [0.7, 0.3, 0.5, 0.6],
]
TEXT_TO_VIDEO = [0, 0, 1, 2, 2]


def test_ties_are_averaged():
    m = retrieval_metrics(np.array(TIES))
    assert m == {"R1": 25.0, "R5": 100.0, "R10": 100.0, "MdR": 2.75, "MnR": 2.625}
    assert all(type(v) is float for v in m.values())


def test_constant_matrix_scores_r1_zero():
    # Every true item ties with the 2 others: rank 1 + 2/2 = 2 for every row, in both directions.
    expected = {"R1": 0.0, "R5": 100.0, "R10": 100.0, "MdR": 2.0, "MnR": 2.0}
    assert retrieval_metrics(np.full((3, 3), 0.7)) == expected
    assert video_to_text_metrics(np.full((3, 3), 0.7)) == expected
    # 5 captions over 3 videos: each text ties with 2 other videos; each video's M row is constant.
    assert retrieval_metrics(np.full((5, 3), 0.7), [0, 0, 1, 2, 2]) == expected
    assert video_to_text_metrics(np.full((5, 3), 0.7), [0, 0, 1, 2, 2]) == expected


def test_r_at_k_and_ranks_beyond_ten():
    # sim[i, j] = 1 for j < i, 0.5 on the diagonal, 0 above it: row i has exactly i items above
    # its own, so ranks are 1..12: R1 = 100/12, R5 = 500/12, R10 = 1000/12, MdR = MnR = 6.5.
    n = 12
    sim = np.tril(np.ones((n, n)), -1) + 0.5 * np.eye(n)
    m = retrieval_metrics(sim)
    assert m["R1"] == pytest.approx(100 / 12) and m["R5"] == pytest.approx(500 / 12)
    assert m["R10"] == pytest.approx(1000 / 12) and m["MdR"] == 6.5 and m["MnR"] == 6.5


def test_video_to_text_square_is_the_transpose():
    # Columns of TIES as video queries, g(v) = v:
    #   video 0: [0.9, 0.4, 0.8, 0.5], true 0.9 -> 1     video 1: [0.1, 0.4, 0.7, 0.5], true 0.4 -> 3
    #   video 2: [0.2, 0.4, 0.6, 0.5], true 0.6 -> 1     video 3: [0.3, 0.0, 0.6, 0.1], true 0.1 -> 3
    m = video_to_text_metrics(np.array(TIES))
    assert m == {"R1": 50.0, "R5": 100.0, "R10": 100.0, "MdR": 2.0, "MnR": 2.0}
    assert m == retrieval_metrics(np.array(TIES).T)


def test_several_captions_per_video_text_to_video():
    # Each caption ranks all 4 columns, the captionless video 3 included:
    #   t0: 0.9 below 0.95 -> 2;  t1: 0.2 below 0.6, 0.3 -> 3;  t2: 0.4 tied with two -> 2;
    #   t3: 0.8 best -> 1;        t4: 0.5 below 0.7, 0.6 -> 3.
    # ranks [2, 3, 2, 1, 3]: R1 = 20, MdR = 2, MnR = 11/5.
    m = retrieval_metrics(np.array(CAPTIONS), np.array(TEXT_TO_VIDEO))
    assert m == {"R1": 20.0, "R5": 100.0, "R10": 100.0, "MdR": 2.0, "MnR": pytest.approx(2.2)}


def test_several_captions_per_video_video_to_text():
    # M[v, u] = max over captions i of video u of S[i, v]; groups u0 = {t0, t1}, u1 = {t2}, u2 = {t3, t4}.
    #   v0 (column 0 = [0.9, 0.2, 0.4, 0.1, 0.7]): M = [0.9, 0.4, 0.7] -> rank 1
    #   v1 (column 1 = [0.5, 0.6, 0.4, 0.2, 0.3]): M = [0.6, 0.4, 0.3] -> rank 2
    #   v2 (column 2 = [0.1, 0.3, 0.1, 0.8, 0.5]): M = [0.3, 0.1, 0.8] -> rank 1
    #   v3 has no caption: left out, although its column would score high.
    # ranks [1, 2, 1]: R1 = 200/3, MdR = 1, MnR = 4/3. (Mean over captions would tie v1's row:
    # [0.4, 0.4, 0.25] -> 1.5; ranking single captions would give v1 rank 3 of 5 texts.)
    m = video_to_text_metrics(np.array(CAPTIONS), TEXT_TO_VIDEO)
    assert m == {"R1": pytest.approx(200 / 3), "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": pytest.approx(4 / 3)}


def test_group_order_does_not_depend_on_caption_order():
    # Shuffling the text rows together with their mapping changes nothing in either direction.
    perm = [4, 2, 0, 3, 1]
    sim, t2v = np.array(CAPTIONS)[perm], np.array(TEXT_TO_VIDEO)[perm]
    assert video_to_text_metrics(sim, t2v) == video_to_text_metrics(np.array(CAPTIONS), TEXT_TO_VIDEO)
    assert retrieval_metrics(sim, t2v) == retrieval_metrics(np.array(CAPTIONS), TEXT_TO_VIDEO)


@pytest.mark.parametrize("fn", [retrieval_metrics, video_to_text_metrics])
def test_torch_and_numpy_agree_and_inputs_unchanged(fn):
    sim_np, t2v_np = np.array(CAPTIONS), np.array(TEXT_TO_VIDEO)
    sim_t32 = torch.tensor(CAPTIONS, dtype=torch.float32, requires_grad=True)
    sim_t64, t2v_t = torch.tensor(CAPTIONS, dtype=torch.float64), torch.tensor(TEXT_TO_VIDEO)
    copies = (sim_np.copy(), t2v_np.copy(), sim_t32.detach().clone(), sim_t64.clone(), t2v_t.clone())
    expected = fn(sim_np, t2v_np)
    assert fn(sim_t64, t2v_t) == expected and fn(sim_t32, t2v_t) == expected and fn(CAPTIONS, TEXT_TO_VIDEO) == expected
    assert all(type(v) is float for v in fn(sim_t32, t2v_t).values())
    for now, before in zip((sim_np, t2v_np, sim_t32.detach(), sim_t64, t2v_t), copies):
        assert (now == before).all()


def test_bad_inputs_raise_with_a_message():
    with pytest.raises(ValueError, match="non-square"):
        retrieval_metrics(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="one per text row"):
        retrieval_metrics(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="outside"):
        video_to_text_metrics(np.zeros((3, 2)), [0, 1, 2])
    with pytest.raises(ValueError, match="^sim contains NaN"):
        retrieval_metrics(np.array([[np.nan, 0.0], [0.0, 1.0]]))


def test_error_messages_give_the_shapes_a_user_passed():
    # A user fixing the call needs the sizes they actually passed, rows before columns.
    with pytest.raises(ValueError, match=r"sim is 3 x 2; a non-square"):
        retrieval_metrics(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"text_to_video must be 5 integers \(one per text row\)"):
        retrieval_metrics(np.zeros((5, 4)), [0, 1, 2])
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        retrieval_metrics(np.zeros((5, 4)), [0, 1, 2, 3, 4])


@pytest.mark.parametrize("sim", [[0.1, 0.2, 0.3], np.zeros((2, 2, 2)), np.zeros((0, 0)), np.zeros((3, 0))])
def test_not_a_non_empty_matrix_is_refused_by_name(sim):
    # A 1-D score vector or an empty matrix is a caller's mistake, not a matrix with no ranks.
    for fn in (retrieval_metrics, video_to_text_metrics):
        with pytest.raises(ValueError, match="^sim must be a non-empty 2-D matrix, got shape"):
            fn(sim)


def test_one_text_one_video_is_a_valid_matrix():
    # The smallest matrix there is: the only video is the right one, rank 1 both ways.
    expected = {"R1": 100.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.0}
    assert retrieval_metrics([[0.3]]) == expected and video_to_text_metrics([[0.3]]) == expected
    assert retrieval_metrics([[0.3], [0.1]], [0, 0]) == expected


def test_a_float_tensor_mapping_is_refused_as_not_integers():
    # E.g. a mapping computed with gradients on: a one-line ValueError, not torch's numpy() error.
    t2v = torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0], requires_grad=True)
    with pytest.raises(ValueError, match="must be 5 integers"):
        retrieval_metrics(np.array(CAPTIONS), t2v)


# ---- dual softmax --------------------------------------------------------------------------------

LN2 = math.log(2)


def test_dual_softmax_by_hand_dim0_and_dim1():
    # sim = T * [[ln4, ln2], [ln2, ln2]] with T = 0.5, so sim / T has exps [[4, 2], [2, 2]].
    #   dim=0 (columns): softmax col 0 = [4, 2]/6 = [2/3, 1/3], col 1 = [1/2, 1/2]
    #       -> sim * p = 0.5 ln2 * [[2 * 2/3, 1/2], [1/3, 1/2]]
    #   dim=1 (rows): row 0 = [2/3, 1/3], row 1 = [1/2, 1/2]
    #       -> 0.5 ln2 * [[2 * 2/3, 1/3], [1/2, 1/2]]
    # (A multiplying temperature, sim * T, would give other softmax weights.)
    sim = 0.5 * np.array([[2 * LN2, LN2], [LN2, LN2]])
    np.testing.assert_allclose(dual_softmax(sim, 0.5, dim=0), 0.5 * LN2 * np.array([[4 / 3, 1 / 2], [1 / 3, 1 / 2]]))
    np.testing.assert_allclose(dual_softmax(sim, 0.5, dim=1), 0.5 * LN2 * np.array([[4 / 3, 1 / 3], [1 / 2, 1 / 2]]))


def test_dual_softmax_reranks_a_hub_video_as_the_formula_says():
    # Texts x videos, t0 -> v1, t1 -> v0; T = 0.1. Raw, t0 prefers v0 (0.9 > 0.8): rank 2.
    # dim=0: column v0 = softmax([9, 9.5]) = [1, e^.5]/(1+e^.5); column v1 = softmax([8, 5]) = [1, e^-3]/(1+e^-3).
    #   t0 row: [0.9/(1+e^.5), 0.8/(1+e^-3)] = [0.340, 0.762] -> now v1: rank 1.
    #   t1 row: [0.95 e^.5/(1+e^.5), 0.5 e^-3/(1+e^-3)] = [0.591, 0.024] -> v0: rank 1.
    sim = np.array([[0.9, 0.8], [0.95, 0.5]])
    e5, e3 = math.exp(0.5), math.exp(-3)
    expected = [[0.9 / (1 + e5), 0.8 / (1 + e3)], [0.95 * e5 / (1 + e5), 0.5 * e3 / (1 + e3)]]
    out = dual_softmax(sim, temperature=0.1)
    np.testing.assert_allclose(out, expected)
    assert retrieval_metrics(sim, [1, 0])["R1"] == 50.0 and retrieval_metrics(out, [1, 0])["R1"] == 100.0
    # dim=1 for video-to-text: row t0 = softmax([9, 8]), row t1 = softmax([9.5, 5]).
    e1, e45 = math.exp(-1), math.exp(-4.5)
    expected_v2t = [[0.9 / (1 + e1), 0.8 * e1 / (1 + e1)], [0.95 / (1 + e45), 0.5 * e45 / (1 + e45)]]
    np.testing.assert_allclose(dual_softmax(sim, temperature=0.1, dim=1), expected_v2t)


def test_dual_softmax_default_is_sim_times_100_stable_and_typed():
    rng = np.random.default_rng(0)
    sim = rng.uniform(-1, 1, size=(6, 4))
    before = sim.copy()
    t = torch.tensor(sim)
    np.testing.assert_allclose(dual_softmax(sim), (t * torch.softmax(t * 100, dim=0)).numpy())
    assert isinstance(dual_softmax(t), torch.Tensor) and isinstance(dual_softmax(sim), np.ndarray)
    np.testing.assert_allclose(dual_softmax(t.float(), dim=1).numpy(), dual_softmax(sim, dim=1), rtol=1e-5)
    assert np.isfinite(dual_softmax(sim, temperature=1e-4)).all()  # exp(1e4) would overflow unstabilised
    np.testing.assert_array_equal(sim, before)
    with pytest.raises(ValueError, match="temperature"):
        dual_softmax(sim, temperature=0)


# ---- QB-Norm -------------------------------------------------------------------------------------

# Querybank (4 rows x 3 gallery items):
#   top-1 per row: 0, 0, 1, 2            -> k=1 counts [2, 1, 1]
#   top-2 per row: {0,1}, {0,1}, {1,2}, {2,0} -> k=2 counts [3, 3, 2]
BANK = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.1], [0.1, 0.7, 0.3], [0.2, 0.1, 0.6]])
# Queries whose top-1 items are 0, 1 and 2.
QUERIES = np.array([[0.6, 0.2, 0.1], [0.2, 0.6, 0.1], [0.1, 0.3, 0.5]])


def normalised(row, beta):
    """exp(beta * s_j) / Z_j with Z_j = sum_p exp(beta * BANK[p, j]), written out."""
    return [math.exp(beta * s) / sum(math.exp(beta * b) for b in BANK[:, j]) for j, s in enumerate(row)]


@pytest.mark.parametrize(
    "k, theta, active_rows",
    [
        (1, 1, [0, 1, 2]),  # A = {0, 1, 2}
        (1, 2, [0]),  # A = {0}: counts [2, 1, 1]
        (2, 3, [0, 1]),  # A = {0, 1}: counts [3, 3, 2]
        (2, 4, []),  # A empty: everything unchanged
    ],
)
def test_qb_norm_activation_set(k, theta, active_rows):
    out = qb_norm(QUERIES, BANK, k=k, beta=1.0, theta=theta)
    for i, row in enumerate(QUERIES):
        if i in active_rows:
            np.testing.assert_allclose(out[i], normalised(row, 1.0), rtol=1e-12)
        else:
            np.testing.assert_array_equal(out[i], row)  # raw similarities, exactly


def test_qb_norm_default_matches_the_original_formula_and_leaves_inputs():
    rng = np.random.default_rng(1)
    sim, bank = rng.uniform(-1, 1, (8, 5)), rng.uniform(-1, 1, (20, 5))
    copies = sim.copy(), bank.copy()
    # The original (ioanacroi/qb-norm, k=1, beta=20), written naively: exp(beta*s) / sum_p exp(beta*b).
    active = np.isin(np.arange(5), np.argmax(bank, axis=1))
    naive = np.where(active[np.argmax(sim, axis=1)][:, None], np.exp(20 * sim) / np.exp(20 * bank).sum(0), sim)
    np.testing.assert_allclose(qb_norm(sim, bank), naive, rtol=1e-12)
    np.testing.assert_array_equal(sim, copies[0])
    np.testing.assert_array_equal(bank, copies[1])
    out_t = qb_norm(torch.tensor(sim, dtype=torch.float32), torch.tensor(bank, dtype=torch.float32))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float64
    np.testing.assert_allclose(out_t.numpy(), naive, rtol=1e-4)


def test_qb_norm_finite_wherever_the_formula_is():
    # beta = 2000: Z_0 = e^1800 + e^1600 and Z_1 = e^200 + e^400 overflow as written, but
    #   out[0, 0] = e^1900 / Z_0 = e^100 / (1 + e^-200) ~ e^100       (2.7e43, finite)
    #   out[0, 1] = e^300 / Z_1 = 1 / (e^-100 + e^100)   ~ e^-100      (3.7e-44, finite, not 0)
    bank = np.array([[0.9, 0.1], [0.8, 0.2]])
    out = qb_norm(np.array([[0.95, 0.15]]), bank, beta=2000.0)
    np.testing.assert_allclose(out, [[math.exp(100), math.exp(-100)]], rtol=1e-12)


def test_qb_norm_rejects_mismatched_shapes_and_bad_k():
    with pytest.raises(ValueError, match="disagree"):
        qb_norm(QUERIES, BANK[:, :2])
    with pytest.raises(ValueError, match="k must be"):
        qb_norm(QUERIES, BANK, k=4)


def test_qb_norm_reads_the_querybank_in_blocks_with_the_same_result(monkeypatch):
    from pipeline.train import inference

    rng = np.random.default_rng(3)
    sim, bank = rng.normal(size=(6, 5)), rng.normal(size=(11, 5)).astype(np.float32)
    whole = qb_norm(sim, bank, k=2, beta=7.0, theta=2)
    monkeypatch.setattr(inference, "BANK_ROWS", 3)  # 4 blocks, the last one short
    assert np.allclose(qb_norm(sim, bank, k=2, beta=7.0, theta=2), whole, rtol=1e-12, atol=0)
    assert np.allclose(qb_norm(sim, torch.from_numpy(bank), k=2, beta=7.0, theta=2), whole, rtol=1e-12, atol=0)
    assert np.allclose(qb_norm(sim, bank.tolist(), k=2, beta=7.0, theta=2), whole, rtol=1e-12, atol=0)
