"""Knowledge clustering (MMI-TVR Sec. 4.2.2, Eq. 4-5): question vectors from a model's input
embeddings, k-means with k found by the silhouette, each cluster nearest-the-centre first."""

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer, LlamaForCausalLM

from pipeline.mmi.clusters import cluster_questions, fit_clusters
from pipeline.models import question_embeddings
from pipeline.models.question_embeddings import mean_word_embeddings, sentence_embeddings
from pipeline.models.tiny_lm import build_tiny_lm, build_tiny_vlm

# Four topics, each with topic words planted near its own direction, and paraphrased questions
# about them, interleaved in the pool so that no group is a run of neighbours.
TOPICS = [["guitar", "song", "band"], ["kitchen", "recipe", "cooking"],
          ["soccer", "goal", "player"], ["rain", "weather", "storm"]]
PARAPHRASES = [
    ["which song is the band playing", "what song does this band perform",
     "does the band play the guitar", "is a guitar heard in the song"],
    ["what recipe is made in the kitchen", "which recipe is the chef cooking",
     "who is cooking in the kitchen", "is the kitchen used for cooking"],
    ["did the player score a goal", "which player scored the goal",
     "is the soccer player running", "how many goal attempts in soccer"],
    ["is there rain in the weather", "does the storm bring heavy rain",
     "what is the weather during the storm", "how strong is the rain storm"],
]
POOL = [PARAPHRASES[group][i] for i in range(4) for group in range(4)]
GROUP_OF = [group for _ in range(4) for group in range(4)]


def partition(groups):
    return {frozenset(members) for members in groups}


def planted_groups():
    return partition([[q for q, g in enumerate(GROUP_OF) if g == group] for group in range(4)])


def no_full_load(monkeypatch):
    def refuse(*args):
        raise AssertionError("the whole model was loaded although the safetensors hold the embeddings")
    monkeypatch.setattr(question_embeddings, "_rows_from_loaded_model", refuse)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm") / "lm")


@pytest.fixture(scope="module")
def topic_lm(tmp_path_factory):
    """The tiny LM with each topic word added as one token whose row lies near its topic's axis;
    every other row (bytes) stays small and random."""
    folder = build_tiny_lm(tmp_path_factory.mktemp("topic-lm") / "lm")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer.add_tokens([word for words in TOPICS for word in words])
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    table = model.get_input_embeddings().weight
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for axis, words in enumerate(TOPICS):
            for word in words:
                row = 0.05 * torch.randn(table.shape[1], generator=noise)
                row[axis] += 1.0
                table[tokenizer.convert_tokens_to_ids(word)] = row
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def blobs(seed=0, per_group=6, groups=4, dim=8):
    """Well separated Gaussian blobs in a shuffled pool; returns the points and each one's blob."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(groups, dim))
    truth = rng.permutation(np.repeat(np.arange(groups), per_group))
    return centres[truth] + rng.normal(scale=0.5, size=(len(truth), dim)), truth


# ---- recovering planted groups -------------------------------------------------------------------


def test_gaussian_blobs_are_recovered_with_k_found_by_the_silhouette():
    points, truth = blobs()
    clustering = fit_clusters(points)
    assert (clustering.k, clustering.chosen_by) == (4, "silhouette")
    assert partition(clustering.clusters) == partition([np.flatnonzero(truth == g) for g in range(4)])
    assert clustering.silhouette > 0.8


def test_paraphrased_questions_cluster_by_topic_end_to_end(topic_lm, monkeypatch):
    no_full_load(monkeypatch)
    vectors = mean_word_embeddings(POOL, topic_lm)
    assert vectors.shape == (16, 32) and vectors.dtype == np.float32
    clustering = fit_clusters(vectors)
    assert (clustering.k, clustering.chosen_by) == (4, "silhouette")
    assert partition(cluster_questions(vectors)) == planted_groups()


def test_a_configured_k_is_kept():
    points, _ = blobs()
    clustering = fit_clusters(points, k=2)
    assert (clustering.k, clustering.chosen_by) == (2, "config")
    assert len(clustering.clusters) == 2 and clustering.silhouette is not None


def test_a_silhouette_tie_goes_to_the_smaller_k(monkeypatch):
    from pipeline.mmi import clusters

    monkeypatch.setattr(clusters, "_silhouette", lambda points, labels: 0.5)
    points, _ = blobs()
    assert fit_clusters(points, k_min=3, k_max=6).k == 3


# ---- order, numbering, determinism -----------------------------------------------------------------


def test_each_cluster_is_ordered_by_distance_to_its_centroid():
    points, _ = blobs(seed=3, per_group=7)
    clustering = fit_clusters(points, k=4)
    for number, members in enumerate(clustering.clusters):
        assert set(np.flatnonzero(clustering.labels == number)) == set(members)
        centre = points[members].mean(axis=0)
        mine = np.linalg.norm(points[members] - centre, axis=1)
        np.testing.assert_allclose(clustering.distances[members], mine, rtol=1e-12)
        assert np.all(np.diff(mine) >= 0)  # ascending
        assert list(clustering.ranks[members]) == list(range(len(members)))
    assert sorted(i for members in clustering.clusters for i in members) == list(range(len(points)))


def test_equal_distances_are_ordered_by_index():
    # Two clusters of four points on a square's corners: all four equally far from their centre.
    square = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=float)
    points = np.concatenate([square + 100, square - 100])[[4, 0, 5, 1, 6, 2, 7, 3]]
    clustering = fit_clusters(points, k=2)
    assert clustering.clusters == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert list(clustering.ranks) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_clusters_are_numbered_by_their_first_question_whatever_the_seed():
    points, _ = blobs(seed=1)
    labels = [fit_clusters(points, k=4, seed=seed).labels for seed in range(6)]
    for other in labels[1:]:
        np.testing.assert_array_equal(other, labels[0])
    first_seen = [int(np.flatnonzero(labels[0] == c)[0]) for c in range(4)]
    assert labels[0][0] == 0 and first_seen == sorted(first_seen)


def test_the_same_seed_gives_the_same_clustering():
    points = np.random.default_rng(7).normal(size=(30, 5))  # no structure: k-means depends on its start
    first, second = fit_clusters(points, seed=11), fit_clusters(points, seed=11)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.distances, second.distances)
    assert (first.k, first.silhouette, first.clusters) == (second.k, second.silhouette, second.clusters)


# ---- small and degenerate pools ----------------------------------------------------------------------


def test_a_pool_smaller_than_k_gets_one_cluster_per_question():
    points = np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 0.0]])
    clustering = fit_clusters(points, k=5)
    assert (clustering.k, clustering.chosen_by, clustering.silhouette) == (3, "pool_size", None)
    assert clustering.clusters == [[0], [1], [2]]
    np.testing.assert_array_equal(clustering.distances, 0.0)


def test_a_search_range_above_the_pool_takes_the_largest_k_it_allows():
    points, _ = blobs(per_group=1)  # four questions, k_min 5
    clustering = fit_clusters(points, k_min=5, k_max=8)
    assert (clustering.k, clustering.chosen_by) == (4, "pool_size")


def test_one_and_two_questions():
    one = fit_clusters(np.array([[1.0, 2.0]]))
    assert (one.k, one.clusters, one.chosen_by, one.silhouette) == (1, [[0]], "pool_size", None)
    assert one.distances.tolist() == [0.0] and one.ranks.tolist() == [0]
    two = fit_clusters(np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert (two.k, two.clusters, two.chosen_by, two.silhouette) == (2, [[0], [1]], "pool_size", None)
    together = fit_clusters(np.array([[0.0, 0.0], [3.0, 4.0]]), k=1)
    assert (together.k, together.clusters, together.chosen_by) == (1, [[0, 1]], "config")
    np.testing.assert_allclose(together.distances, [2.5, 2.5])


def test_identical_embeddings_do_not_crash():
    same = np.ones((6, 4))
    for k in (None, 1, 3):
        clustering = fit_clusters(same, k=k)
        assert clustering.k == 1 and clustering.clusters == [[0, 1, 2, 3, 4, 5]]
        assert clustering.silhouette is None
        np.testing.assert_array_equal(clustering.distances, 0.0)
    assert fit_clusters(same, k=3).chosen_by == "pool_size"
    # Two distinct points, each three times: at most two clusters, and exactly those.
    pairs = np.array([[0.0, 0.0], [1.0, 1.0]] * 3)
    clustering = fit_clusters(pairs, k=4)
    assert (clustering.k, clustering.clusters) == (2, [[0, 2, 4], [1, 3, 5]])
    assert fit_clusters(pairs).clusters == [[0, 2, 4], [1, 3, 5]]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no rows"):
        fit_clusters(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="2-D"):
        fit_clusters(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        fit_clusters(np.array([[0.0], [np.nan]]))
    with pytest.raises(ValueError, match="k must be at least 1"):
        fit_clusters(np.zeros((3, 2)), k=0)
    with pytest.raises(ValueError, match="k_min <= k_max"):
        fit_clusters(np.zeros((3, 2)), k_min=5, k_max=4)


# ---- question vectors ------------------------------------------------------------------------------


def by_hand(question, tokenizer, table):
    """Each word alone to its tokens (byte-level, so the same as in context), the mean of their
    rows, then the mean over the words."""
    word_vectors = [table[tokenizer(word, add_special_tokens=False)["input_ids"]].mean(axis=0)
                    for word in question.split()]
    return np.mean(word_vectors, axis=0)


# Words of different token counts (the two-byte "é" too), so that a mean over all tokens differs
# from the mean of the words' means.
QUESTION = "Is  a café guitarist playing?"


def test_mean_word_embeddings_is_the_mean_of_word_means(tiny_lm, monkeypatch):
    no_full_load(monkeypatch)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    table = AutoModelForCausalLM.from_pretrained(tiny_lm).get_input_embeddings().weight.detach().numpy()
    vectors = mean_word_embeddings([QUESTION, "ok"], tiny_lm)
    np.testing.assert_allclose(vectors[0], by_hand(QUESTION, tokenizer, table), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(vectors[1], by_hand("ok", tokenizer, table), rtol=1e-5, atol=1e-7)


def test_mean_word_embeddings_reads_a_vlm_language_model(tmp_path, monkeypatch):
    no_full_load(monkeypatch)
    folder = build_tiny_vlm(tmp_path / "vlm")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    table = AutoModelForImageTextToText.from_pretrained(folder).get_input_embeddings().weight.detach().numpy()
    vectors = mean_word_embeddings([QUESTION], folder)
    np.testing.assert_allclose(vectors[0], by_hand(QUESTION, tokenizer, table), rtol=1e-5, atol=1e-7)


def test_the_output_head_is_never_taken_for_the_input_embeddings(tiny_lm, tmp_path, monkeypatch):
    """Untied weights: lm_head.weight has the input table's shape and sorts before it."""
    source = LlamaForCausalLM.from_pretrained(tiny_lm)
    source.config.tie_word_embeddings = False
    untied = LlamaForCausalLM(source.config)
    untied.load_state_dict(source.state_dict())
    head = untied.lm_head.weight
    with torch.no_grad():
        head.copy_(torch.randn(head.shape, generator=torch.Generator().manual_seed(1)))
    untied.save_pretrained(tmp_path / "untied")
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(tmp_path / "untied")
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= set(load_file(tmp_path / "untied" / "model.safetensors"))
    no_full_load(monkeypatch)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    table = source.get_input_embeddings().weight.detach().numpy()
    vectors = mean_word_embeddings([QUESTION], str(tmp_path / "untied"))
    np.testing.assert_allclose(vectors[0], by_hand(QUESTION, tokenizer, table), rtol=1e-5, atol=1e-7)


def test_a_checkpoint_without_safetensors_falls_back_to_loading_the_model(tiny_lm, tmp_path):
    folder = tmp_path / "bin"
    shutil.copytree(tiny_lm, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    expected = mean_word_embeddings([QUESTION], tiny_lm)
    np.testing.assert_allclose(mean_word_embeddings([QUESTION], str(folder)), expected, rtol=1e-6)


def test_a_slow_tokenizer_splits_word_by_word(tiny_lm):
    class Slow:
        """The tiny tokenizer without offsets, as a slow (Python) tokenizer is."""
        is_fast = False

        def __init__(self, fast):
            self.fast = fast

        def __call__(self, text, **kwargs):
            assert "return_offsets_mapping" not in kwargs
            return self.fast(text, **kwargs)

    fast = AutoTokenizer.from_pretrained(tiny_lm)
    with_offsets = question_embeddings._word_token_ids(QUESTION, fast)
    assert question_embeddings._word_token_ids(QUESTION, Slow(fast)) == with_offsets
    assert [len(ids) for ids in with_offsets] == [2, 1, 5, 9, 8]  # bytes of each word


def test_a_question_without_tokens_is_an_error(tiny_lm):
    with pytest.raises(ValueError, match="'   '"):
        mean_word_embeddings(["fine", "   "], tiny_lm)


def test_sentence_embeddings_through_a_local_sentence_transformer(tmp_path):
    from sentence_transformers import SentenceTransformer
    try:  # sentence-transformers 6 moved the modules (the old path warns)
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    words = "[PAD] [UNK] [CLS] [SEP] [MASK] what is the man doing a guitar song who plays ? ##s".split()
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(words)})
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=64)).eval()
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    SentenceTransformer(modules=[Transformer(str(tmp_path / "bert")), Pooling(16, "mean")]).save(str(tmp_path / "st"))
    questions = ["What is the man doing?", "who plays a song"]
    vectors = sentence_embeddings(questions, str(tmp_path / "st"))
    assert vectors.shape == (2, 16) and vectors.dtype == np.float32
    for question, vector in zip(questions, vectors):
        with torch.no_grad():
            hidden = bert(**tokenizer(question, return_tensors="pt")).last_hidden_state[0]
        np.testing.assert_allclose(vector, hidden.mean(dim=0).numpy(), rtol=1e-4, atol=1e-6)
    assert sentence_embeddings([], str(tmp_path / "st")).shape == (0, 16)
    # The question_clusters stage's embedding option reaches the same model.
    from pipeline.mmi.pools import load_pool
    from pipeline.stages.question_clusters import QuestionClustersConfig, cluster_pool, embed_questions

    (tmp_path / "pools").mkdir()
    (tmp_path / "pools" / "tiny.txt").write_text("What is the man doing?\nwho plays a song\nwho plays a guitar\n")
    config = QuestionClustersConfig(embedding="sentence_transformers", model=str(tmp_path / "st"), k=2)
    np.testing.assert_array_equal(embed_questions(config, questions), vectors)
    clustering = cluster_pool(config, load_pool("tiny", tmp_path / "pools"))
    assert clustering.k == 2 and sorted(i for c in clustering.clusters for i in c) == [0, 1, 2]
