"""Why a video, or some of its frames, cannot be used."""

from __future__ import annotations


class VideoError(Exception):
    """A video that cannot be used. `reason` is one of the FAILURES codes (missing, empty,
    truncated, no_video_stream, unsupported_codec, corrupt, decode_error, outside_root,
    not_a_file, unreadable, unsupported_container, timeout; see docs/decoding.md); `message` is
    for people."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class DamagedFrames(VideoError):
    """Requested frames that decoded with errors, in themselves or in any frame decoded since
    their GOP's keyframe (what they may be predicted from). Decoders conceal such errors (smeared
    blocks look like a frame), so a source that detects them raises this instead of returning
    them; `indices` are the affected requested frame indices, `message` the decoder's words.
    `per_frame` is False where the source could only tell that some of `indices` are damaged
    (a decoder whose log is not tied to frames): each of them may still be clean read alone."""

    def __init__(self, indices: list[int], message: str, per_frame: bool = True):
        super().__init__("damaged_frames", message)
        self.indices = sorted(set(indices))
        self.per_frame = per_frame or len(self.indices) <= 1
