"""What a format adapter hands back: videos with their captions, in annotation-file order, and
the problems found while reading (a released split file that is not there).

Adapters only parse; they do not look for video files, deduplicate or sort. `assemble` does
that once for every format, so every dataset gets the same problem report.
"""

from dataclasses import dataclass, field
from typing import Any


class AnnotationError(ValueError):
    """The annotations cannot be read: says which file, which key or line, and what was expected."""


@dataclass(frozen=True)
class Problem:
    """One row of the manifest's problems table: something that needs attention, listed by id."""

    problem: str  # missing_video | not_a_file | ambiguous_video | duplicate_video_id | missing_split_file | ...
    id: str
    detail: str


@dataclass
class CaptionRecord:
    text: str
    extra: dict[str, Any] = field(default_factory=dict)
    # A dataset's own caption id (field name, value), e.g. ("sen_id", "12") for MSR-VTT. Kept in
    # `extra` by the adapter; here only so that a repeated native id can be reported.
    native_id: tuple[str, str] | None = None


@dataclass
class VideoRecord:
    video_id: str
    split: str
    captions: list[CaptionRecord]
    source: str  # the annotation file (and line) it came from, quoted in problem details
    extra: dict[str, Any] = field(default_factory=dict)
    # File names (without extension) that identify this video under the video root; defaults to
    # the video id. ActivityNet gives both "v_<id>" and "<id>".
    file_stems: tuple[str, ...] = ()
    # A path relative to the video root tried before any stem lookup (LSMDC's <movie>/<clip>.avi).
    preferred_file: str | None = None
    # A path the annotations state outright (generic manifests); relative to the video root or
    # absolute. When set, no lookup by stem happens.
    given_path: str | None = None

    def stems(self) -> tuple[str, ...]:
        return self.file_stems or (self.video_id,)


@dataclass
class Annotations:
    videos: list[VideoRecord]
    # Found while reading, e.g. a released split file absent from the folder; `assemble` adds
    # them to the manifest's problems.
    problems: list[Problem] = field(default_factory=list)
