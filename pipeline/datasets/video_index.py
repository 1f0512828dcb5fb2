"""Finding each annotated video's file under the video root, whatever its extension or folder."""

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.records import Problem, VideoRecord

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv"}
)


NOT_A_FILE = "not_a_file"
_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


@dataclass(frozen=True)
class Resolution:
    path: str | None  # absolute path of the video file, None when there is no usable one
    problems: tuple[Problem, ...] = ()


class VideoIndex:
    """Every video file under a root, keyed by its name without the video extension."""

    def __init__(self, root: Path):
        self.root = os.path.abspath(root)
        self.real_root = os.path.realpath(root)
        self.by_stem: dict[str, list[str]] = {}  # stem -> paths relative to the root, posix style
        for relative in _walk_files(self.root):
            stem = video_stem(os.path.basename(relative))
            if stem is not None:
                self.by_stem.setdefault(stem, []).append(relative)

    def resolve(self, video: VideoRecord) -> Resolution:
        if video.given_path:
            return self._resolve_given(video.video_id, video.given_path)
        if video.preferred_file and os.path.isfile(os.path.join(self.root, video.preferred_file)):
            return self._checked(video.video_id, video.preferred_file)
        named = sorted({path for stem in video.stems() for path in self.by_stem.get(stem, [])})
        # A FIFO, socket or device with a video's name is never a candidate (probe would open it);
        # a dangling link stays one, and probe reports it missing.
        kinds = {path: self._not_a_file(os.path.join(self.root, path)) for path in named}
        matches = [path for path in named if kinds[path] in (None, "missing")]
        if not matches and named:
            listed = ", ".join(f"{path} is {kinds[path]}" for path in named)
            detail = f"{listed}, not a regular file; not opened"
            return Resolution(None, (Problem(NOT_A_FILE, video.video_id, detail),))
        if not matches:
            looked_for = " or ".join(f"{stem}.<video extension>" for stem in video.stems())
            detail = f"no file named {looked_for} under the video root"
            return Resolution(None, (Problem("missing_video", video.video_id, detail),))
        # Deterministic pick: the shallowest, shortest path, then alphabetical.
        chosen = min(matches, key=lambda path: (len(path), path))
        resolution = self._checked(video.video_id, chosen)
        if len(matches) == 1:
            return resolution
        detail = f"{len(matches)} files match: {', '.join(matches)}; using {chosen}"
        return Resolution(resolution.path, (Problem("ambiguous_video", video.video_id, detail),) + resolution.problems)

    def _resolve_given(self, video_id: str, given: str) -> Resolution:
        absolute = os.path.normpath(os.path.join(self.root, given))  # join keeps an absolute `given`
        if not self._inside_root(absolute):
            detail = f"path {given} resolves to {os.path.realpath(absolute)}, outside the video root"
            return Resolution(None, (Problem("path_outside_root", video_id, detail),))
        kind = self._not_a_file(absolute)
        if kind == "missing":
            detail = f"path {given}: no such file under the video root"
            return Resolution(None, (Problem("missing_video", video_id, detail),))
        if kind is not None:
            detail = f"path {given} is {kind}, not a regular file; not opened"
            return Resolution(None, (Problem(NOT_A_FILE, video_id, detail),))
        return Resolution(absolute)

    @staticmethod
    def _not_a_file(path: str) -> str | None:
        """None for a regular file (links followed); else what is there, found by stat alone:
        opening a FIFO to find out would block until a writer comes, and a device may be endless."""
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return "missing"
        if stat.S_ISREG(mode):
            return None
        for test, kind in _KINDS:
            if test(mode):
                return kind
        return "not a regular file"

    def _checked(self, video_id: str, relative: str) -> Resolution:
        """The file under the root, unless a symlink takes it outside the root."""
        absolute = os.path.join(self.root, relative)
        if self._inside_root(absolute):
            return Resolution(absolute)
        detail = f"{relative} resolves to {os.path.realpath(absolute)}, outside the video root"
        return Resolution(None, (Problem("path_outside_root", video_id, detail),))

    def _inside_root(self, path: str) -> bool:
        real = os.path.realpath(path)
        return os.path.commonpath([self.real_root, real]) == self.real_root


def video_stem(file_name: str) -> str | None:
    """The file name without its video extension, or None for files that are not videos."""
    stem, extension = os.path.splitext(file_name)
    return stem if extension.lower() in VIDEO_EXTENSIONS and stem else None


def _walk_files(root: str) -> list[str]:
    """Relative posix paths of all files below `root`, following directory symlinks once.

    Symlinked folders are followed because datasets are often assembled from links to big
    disks; a link that leaves the root is then reported per video rather than silently missed.
    """
    files = []
    seen_dirs = set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:  # a link cycle or a second link to the same folder
            subfolders.clear()
            continue
        seen_dirs.add(real)
        subfolders.sort()
        relative_folder = os.path.relpath(folder, root)
        for name in sorted(names):
            relative = name if relative_folder == "." else os.path.join(relative_folder, name)
            files.append(Path(relative).as_posix())
    return files
