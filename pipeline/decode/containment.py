"""Which files a decoder may open: regular files under the video root, in a self-contained container.

FFmpeg's demuxers for playlists and lists (HLS, ffconcat, SDP, DASH) and its image-sequence
reader open *other* files, or network streams, named inside the file or its name: a `.m3u8`
(or one renamed `.mp4`) inside the video root makes any decoder read media from anywhere.
`check_video_file` therefore looks at the file itself, in Python, before ffprobe, ffmpeg, decord
or PyAV touch it: the real path (symlinks resolved) must lie under the root, the file must be a
regular file (a FIFO or a device would block the worker), and its leading bytes must announce
one of the allowed containers, whatever the file's name says. ffprobe and ffmpeg additionally
run with `INPUT_OPTIONS`, which refuse every protocol but `file` and every demuxer not listed.

MP4/MOV data references to other files (`dref`) are not followed by FFmpeg unless asked to
(`enable_drefs`), and Matroska's linked segments are not supported, so these containers are
self-contained as FFmpeg reads them.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from pipeline.decode.errors import VideoError

# FFmpeg's names of the allowed demuxers (`ffmpeg -demuxers`); ffprobe reports a family by all
# its names ("mov,mp4,m4a,3gp,3g2,mj2"), and the whitelist matches any one of them.
ALLOWED_DEMUXERS = (
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2",  # ISO base media: MP4, MOV, 3GP, M4V
    "matroska", "webm",
    "avi",
    "mpegts", "mpeg",  # MPEG transport and program streams (.ts, .m2ts, .mpg, .vob)
    "flv", "live_flv",  # one file format; FFmpeg names a live recording's probe separately
    "ogg",
    "asf",  # WMV
)  # fmt: skip

# Input options for every ffprobe and ffmpeg input: a second line of defence should a file get
# past the byte check (also valid as PyAV's `av.open(..., options=INPUT_OPTIONS)`).
INPUT_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": ",".join(ALLOWED_DEMUXERS)}

ALLOWED_FAMILIES = "MP4/MOV/3GP/M4V, Matroska/WebM, AVI, MPEG-TS/PS, FLV, Ogg, ASF/WMV"

# Enough for every signature below: MPEG-TS needs a few 204-byte packets after a junk prefix.
SNIFF_BYTES = 4096

# First box types FFmpeg's mov demuxer recognises at the start of a file (libavformat/mov.c).
_ISO_BMFF_BOXES = frozenset(
    {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"junk", b"pnot", b"udta", b"uuid", b"styp", b"sidx"}
)
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_TS_PACKET_SIZES = (188, 192, 204)  # plain, M2TS (time code first), with Reed-Solomon parity

# Text that makes FFmpeg read other files or open network streams; its probes look at the bytes
# before the first NUL, case-insensitively for the XML ones.
_REFERRING_TEXT = (
    (b"#extm3u", "an HLS playlist (#EXTM3U): it makes FFmpeg read the media it lists, from anywhere"),
    (b"ffconcat version", "an ffconcat list: it makes FFmpeg read the files it lists"),
    (b"c=in ip", "an SDP session description: it makes FFmpeg open the network streams it names"),
    (b"<mpd", "a DASH manifest: it makes FFmpeg read the segments it lists"),
    (b"<compositionplaylist", "an IMF composition playlist: it makes FFmpeg read the files it lists"),
)

# Formats that are not video containers, named so the message says what the file is.
_OTHER_FORMATS = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"fLaC", "FLAC audio"),
    (b"ID3", "MP3 audio"),
)

# FFmpeg's image2 demuxer reads a file name with an image extension and a frame-number pattern
# (or glob characters) as a whole sequence of files, whatever the file holds.
_IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pam", ".tga",
     ".dpx", ".exr", ".jp2", ".j2k", ".jxl", ".sgi", ".pcx", ".xwd", ".hdr", ".qoi", ".dds", ".raw"}
)  # fmt: skip
_SEQUENCE_PATTERN = re.compile(r"%0?\d*d|[*?{\[]")


@dataclass(frozen=True)
class VideoFile:
    path: str  # real path, symlinks resolved: what the decoders open, so a link changed later cannot redirect them
    size: int
    # The allowed container the leading bytes announce ("mp4", "matroska", ...); None when they
    # match no known format at all (random bytes, a damaged header).
    container: str | None


def check_video_file(path: str, video_root: str | None = None) -> VideoFile:
    """The file a decoder may open for `path`, or VideoError: `outside_root`, `missing`,
    `not_a_file` (FIFO, device, directory, socket), `unreadable`, `empty`, `unsupported_container` (a playlist,
    list, image, audio or text file, or an image-sequence name). Never blocks: the file is opened
    without waiting for a writer and only if it is a regular file."""
    real = os.path.realpath(path)
    if video_root is not None and not _is_under(real, os.path.realpath(video_root)):
        raise _error("outside_root", f"{path} resolves to {real}, outside the video root {video_root}")
    head, size = _read_head(path, real)
    _check_name(path, real)
    container = sniff_container(head, path)
    if container is None:
        _check_unknown_bytes(path, head)
    return VideoFile(path=real, size=size, container=container)


def sniff_container(head: bytes, path: str = "the file") -> str | None:
    """The allowed container that `head` (a file's first bytes) starts like, or None. Raises
    VideoError("unsupported_container") for text that makes FFmpeg read other files, even
    behind a container's signature (FFmpeg's probes would score both)."""
    _refuse_referring_text(path, head)
    return _allowed_signature(head)


def _allowed_signature(head: bytes) -> str | None:
    if len(head) >= 8 and head[4:8] in _ISO_BMFF_BOXES and not _is_jpeg2000_brand(head):
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg"
    if _is_transport_stream(head):
        return "mpegts"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(_ASF_GUID):
        return "asf"
    return None


def _is_jpeg2000_brand(head: bytes) -> bool:
    # JPEG 2000 and JPEG XL images are ISO boxes too; FFmpeg's mov demuxer declines them.
    return head[4:8] == b"ftyp" and head[8:12] in (b"jp2 ", b"jpx ", b"jxl ")


def _is_transport_stream(head: bytes) -> bool:
    """Sync bytes (0x47) at one packet size's stride, from an offset within the first packet:
    three in a row, or as many as a shorter file holds (at least two)."""
    for size in _TS_PACKET_SIZES:
        for offset in range(min(size, len(head))):
            count = min(3, (len(head) - offset - 1) // size + 1)
            if count >= 2 and all(head[offset + k * size] == 0x47 for k in range(count)):
                return True
    return False


def _refuse_referring_text(path: str, head: bytes) -> None:
    text = head.split(b"\x00", 1)[0].lower()
    for marker, what in _REFERRING_TEXT:
        if marker in text:
            raise _error("unsupported_container", f"{path} is {what}; {_ONLY_ALLOWED}")


def _check_unknown_bytes(path: str, head: bytes) -> None:
    """Name what the file is when it is a known non-video format, or text; unknown binary
    data passes (the caller decides: probe calls it corrupt)."""
    for magic, what in _OTHER_FORMATS:
        if head.startswith(magic):
            raise _error("unsupported_container", f"{path} is {what}; {_ONLY_ALLOWED}")
    if head.startswith(b"RIFF") and len(head) >= 12:
        kind = head[8:12].decode("latin-1").strip()
        raise _error("unsupported_container", f"{path} is a RIFF {kind} file, not AVI; {_ONLY_ALLOWED}")
    if b"\x00" not in head:
        # Every allowed container has zero bytes in its first few hundred (sizes, flags), so
        # this is text: a list, a script or a description of media, not media.
        raise _error(
            "unsupported_container",
            f"{path} is text (no zero byte in its first {len(head)} bytes), not a video container; {_ONLY_ALLOWED}",
        )


def _check_name(path: str, real: str) -> None:
    if os.path.splitext(real)[1].lower() in _IMAGE_EXTENSIONS and _SEQUENCE_PATTERN.search(real):
        raise _error(
            "unsupported_container",
            f"{path}: an image name with a frame-number or glob pattern, which FFmpeg reads as an image "
            f"sequence; {_ONLY_ALLOWED}",
        )


def _read_head(path: str, real: str) -> tuple[bytes, int]:
    try:
        info = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        raise _error("missing", f"no such file: {path}") from None
    _require_regular(path, info.st_mode)
    # O_NONBLOCK: should the file have become a FIFO since the stat, opening it still returns.
    try:
        descriptor = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise _error("unreadable", f"cannot open {path}: {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        _require_regular(path, info.st_mode)
        if info.st_size == 0:
            raise _error("empty", f"file is 0 bytes: {path}")
        return handle.read(SNIFF_BYTES), info.st_size


def _require_regular(path: str, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISDIR: "a directory", stat.S_ISSOCK: "a socket"}  # fmt: skip
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    raise _error("not_a_file", f"{path} is {kind}, not a regular file")


def _is_under(real: str, real_root: str) -> bool:
    return os.path.commonpath([real_root, real]) == real_root


_ONLY_ALLOWED = f"only self-contained video files are opened ({ALLOWED_FAMILIES})"


def _error(reason: str, message: str) -> VideoError:
    return VideoError(reason, message)
