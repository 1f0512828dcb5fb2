"""Frame arrays: what every decoder backend shares (sizes, distinct indices, grey frames, resizing)."""

from __future__ import annotations

import numpy as np
from PIL import Image

Size = tuple[int, int]  # (width, height)


def distinct_indices(indices: list[int], frame_count: int) -> tuple[list[int], np.ndarray]:
    """Sorted distinct indices to decode once each, and where each requested index is among
    them (so `decoded[inverse]` answers the request in its order)."""
    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(wanted) and (wanted.min() < 0 or wanted.max() >= frame_count):
        raise IndexError(f"frame indices must be in [0, {frame_count}), got {indices}")
    unique, inverse = np.unique(wanted, return_inverse=True)
    return unique.tolist(), inverse


def scaled_size(width: int, height: int, short_side: int) -> Size | None:
    """The (width, height) whose shorter side is `short_side`, aspect ratio kept (a quarter
    turn does not change which side is shorter); None keeps the stored size."""
    if short_side == 0 or min(width, height) == short_side:
        return None
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_gray(frames: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of RGB frames; both backends use this so their grey frames agree."""
    luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)


def resize_frames(frames: np.ndarray, size: Size) -> np.ndarray:
    if frames.shape[2] == size[0] and frames.shape[1] == size[1]:
        return frames
    resized = [
        np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)) for f in frames
    ]
    return np.stack(resized) if resized else np.empty((0, size[1], size[0], 3), np.uint8)


def gop_starts(keyframe: np.ndarray) -> np.ndarray:
    """The keyframe at or before each frame (frame 0 starts the first GOP, flagged or not)."""
    positions = np.arange(len(keyframe))
    return np.maximum.accumulate(np.where(keyframe, positions, 0))
