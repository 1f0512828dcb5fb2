"""Every table the pipeline writes, declared once.

Bump SCHEMA_VERSION whenever a schema here changes: it is part of every stage's version hash,
so a schema change never mixes old and new rows under one version.
"""

import pyarrow as pa

SCHEMA_VERSION = 2  # 2: video paths relative to the video root

# ---- manifest: what `tvr manifest` writes --------------------------------------------------
# `extra` holds the dataset-specific fields (MSR-VTT category, ActivityNet timestamps,
# Charades script, ...) as a JSON object, so one schema serves every dataset.
VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        # Relative to the video root (recorded in the version's _manifest.json, not hashed), posix
        # separators; null when no file was found (see the manifest's problems).
        pa.field("path", pa.string()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("extra", pa.string()),
    ]
)

CAPTIONS = pa.schema(
    [
        pa.field("caption_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("extra", pa.string()),
    ]
)

# One row per thing in the annotations that needs a researcher's attention.
# problem: missing_video | not_a_file | ambiguous_video | duplicate_video_id | duplicate_caption_id |
#          path_outside_root
MANIFEST_PROBLEMS = pa.schema(
    [
        pa.field("problem", pa.string(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ]
)

# ---- stages ----------------------------------------------------------------------------------
PROBE = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # relative to the video root, as in videos
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("container", pa.string()),
        pa.field("codec", pa.string()),
        pa.field("duration", pa.float64()),  # seconds
        pa.field("fps", pa.float64()),  # average frame rate
        pa.field("frame_count", pa.int64()),
        pa.field("width", pa.int32()),  # as stored, before rotation
        pa.field("height", pa.int32()),
        pa.field("rotation", pa.int32()),  # degrees clockwise to display upright: 0/90/180/270
        pa.field("variable_frame_rate", pa.bool_()),
    ]
)

KEYFRAMES = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("frame_indices", pa.list_(pa.int64()), nullable=False),
        pa.field("timestamps", pa.list_(pa.float64()), nullable=False),  # seconds
        pa.field("frames", pa.list_(pa.binary()), nullable=False),  # JPEG bytes, upright
        pa.field("width", pa.int32(), nullable=False),  # of the stored frames
        pa.field("height", pa.int32(), nullable=False),
        # True when the video has fewer distinct frames than asked for, so some repeat.
        pa.field("repeated_frames", pa.bool_(), nullable=False),
        pa.field("decoder", pa.string(), nullable=False),  # backend that produced the frames
        pa.field("note", pa.string()),  # e.g. why a fallback decoder was used
    ]
)

# Every item a stage could not process, with why. `reason` is a short machine-readable code
# (missing, empty, truncated, no_video_stream, unsupported_codec, corrupt, unsupported_container,
# outside_root, not_a_file, unreadable, timeout, decode_error, damaged_frames, upstream_failed,
# error, worker_crashed; docs/decoding.md); `message` is for people.
FAILURES = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
    ]
)


# Feature widths depend on the model, so these two schemas are built from its dimension.
def frame_features_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("frame_indices", pa.list_(pa.int64()), nullable=False),  # as in keyframes
            pa.field("timestamps", pa.list_(pa.float64()), nullable=False),  # seconds
            pa.field("num_frames", pa.int32(), nullable=False),
            # [num_frames, dim] projected image embeddings, not normalised
            pa.field("features", pa.list_(pa.list_(pa.float16(), dim)), nullable=False),
        ]
    )


def text_features_schema(dim: int, token_width: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("caption_id", pa.string(), nullable=False),
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("features", pa.list_(pa.float16(), dim), nullable=False),  # projected, not normalised
            # The caption was longer than the model's context: the embedding saw only its start.
            pa.field("truncated", pa.bool_(), nullable=False),
            # [n_tokens, token_width] last hidden states of the real tokens; null unless asked for
            pa.field("token_features", pa.list_(pa.list_(pa.float16(), token_width))),
        ]
    )


# visual_tags and textual_tags: one row per request (an item at one temperature).
TAGS = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),  # "<item id>@t<temperature>"
        pa.field("item_id", pa.string(), nullable=False),  # video_id (visual) or caption_id (textual)
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("temperature", pa.float64(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("revision", pa.string()),
        pa.field("prompt", pa.string(), nullable=False),  # the template's name
        pa.field("prompt_sha256", pa.string(), nullable=False),
        pa.field("raw_output", pa.string(), nullable=False),  # the model's text, as generated
        # "stop", or "length": the output was cut at max_tokens, and its last, cut line is not parsed
        pa.field("finish_reason", pa.string(), nullable=False),
        pa.field("prompt_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("tags", pa.list_(pa.string()), nullable=False),  # cleaned (pipeline.tags.parse_tags)
    ]
)


# ---- MMI-TVR knowledge (docs/mmi.md) -----------------------------------------------------------

# question_clusters: one row per question of the textual and visual pools.
QUESTION_CLUSTERS = pa.schema(
    [
        pa.field("question_id", pa.string(), nullable=False),  # "<pool>/q<index, 3 digits>"
        pa.field("pool", pa.string(), nullable=False),  # "text" or "visual"
        pa.field("question_index", pa.int32(), nullable=False),  # 0-based, in the pool file's order
        pa.field("line", pa.int32(), nullable=False),  # 1-based line of the pool file
        pa.field("question", pa.string(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),  # 0-based, numbered in the pool order of their first question
        pa.field("distance", pa.float64(), nullable=False),  # Euclidean, to the cluster's centre (Eq. 5)
        pa.field("rank", pa.int32(), nullable=False),  # in its cluster, by distance: 0 = nearest the centre
        pa.field("cluster_size", pa.int32(), nullable=False),
        pa.field("k", pa.int32(), nullable=False),  # clusters in the pool
        pa.field("silhouette", pa.float64()),  # of the pool's clustering; null when k is 1 or every question is alone
        pa.field("k_chosen_by", pa.string(), nullable=False),  # "config", "silhouette" or "pool_size"
    ]
)

# One candidate demonstration of a cluster (Eq. 6): a question answered on one sampled item.
DEMONSTRATION_CANDIDATE = pa.struct(
    [
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),  # the question's rank in its cluster
        pa.field("item_id", pa.string(), nullable=False),  # the caption or video it was answered on
        pa.field("answer", pa.string(), nullable=False),  # "" when the request failed
        pa.field("finish_reason", pa.string(), nullable=False),  # stop, length or error
        pa.field("error", pa.string()),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("question_words", pa.int32(), nullable=False),  # Eq. 7's terms, in whitespace words
        pa.field("answer_words", pa.int32(), nullable=False),
        pa.field("answer_terms", pa.int32(), nullable=False),
    ]
)

# demonstrations: one row per pool and cluster, every candidate and the one Eq. 7 chose.
DEMONSTRATIONS = pa.schema(
    [
        pa.field("demonstration_id", pa.string(), nullable=False),  # "<pool>/c<cluster, 2 digits>"
        pa.field("pool", pa.string(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("candidates", pa.list_(DEMONSTRATION_CANDIDATE), nullable=False),  # questions by rank, then items
        pa.field("chosen", pa.int32(), nullable=False),  # index into candidates
        # The chosen candidate's question (the cluster's representative question), answer and item:
        # the item stands where the paper's "retrieval result" is (docs/mmi.md).
        pa.field("question_id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("item_text", pa.string()),  # the caption, for the text pool; null for a video
        pa.field("model", pa.string(), nullable=False),
        pa.field("revision", pa.string()),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("prompt_sha256", pa.string(), nullable=False),
    ]
)


def skeletons_schema(key: str) -> pa.Schema:
    """text_skeletons (key caption_id) and video_skeletons (key video_id): one row per item, the
    answers to each cluster's representative question in cluster order, and their concatenation."""
    keys = [pa.field("caption_id", pa.string(), nullable=False)] if key == "caption_id" else []
    return pa.schema(
        [
            *keys,
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("clusters", pa.list_(pa.int32()), nullable=False),
            pa.field("question_ids", pa.list_(pa.string()), nullable=False),
            pa.field("answers", pa.list_(pa.string()), nullable=False),
            # per answer: "stop", or "length" (cut at max_tokens; the answer is kept as generated)
            pa.field("finish_reasons", pa.list_(pa.string()), nullable=False),
            pa.field("seeds", pa.list_(pa.int64()), nullable=False),
            pa.field("skeleton", pa.string(), nullable=False),  # the answers, in cluster order
            pa.field("model", pa.string(), nullable=False),
            pa.field("revision", pa.string()),
            pa.field("prompt", pa.string(), nullable=False),
            pa.field("prompt_sha256", pa.string(), nullable=False),
            pa.field("prompt_tokens", pa.int64(), nullable=False),  # summed over the item's requests
            pa.field("output_tokens", pa.int64(), nullable=False),
        ]
    )


TEXT_SKELETONS = skeletons_schema("caption_id")
VIDEO_SKELETONS = skeletons_schema("video_id")

# skeleton_scores: one row per caption and candidate video (Eq. 9).
SKELETON_SCORES = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),  # "<caption_id>|<video_id>"
        pa.field("caption_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("candidate_rank", pa.int32(), nullable=False),  # 0-based, in the candidate source's order
        pa.field("similarity", pa.float64(), nullable=False),  # the candidate source's retrieval similarity
        pa.field("candidates", pa.string(), nullable=False),  # "clip" or "topk:<sha256 of the file>"
        pa.field("score", pa.float64()),  # the probability parsed from the answer; null when there is none
        pa.field("raw_output", pa.string(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("revision", pa.string()),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("prompt_sha256", pa.string(), nullable=False),
        pa.field("prompt_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
    ]
)

# The file `tvr eval --write-topk K` writes: each test caption's K best videos by a checkpoint.
TOPK = pa.schema(
    [
        pa.field("caption_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),  # 0-based
        pa.field("similarity", pa.float64(), nullable=False),
    ]
)
