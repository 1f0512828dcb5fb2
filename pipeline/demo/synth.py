"""Synthetic videos made with the ffmpeg command line, for tests, `tvr demo` and benchmarks.

The clips come from lavfi test sources that move (testsrc2's moving elements, mandelbrot's zoom,
scrolling bars), so every frame differs from its neighbours and a decoder that returns the wrong
frame is caught. Broken files (cut, empty, random bytes, unknown codec) exercise the failure paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from pipeline.decode.probe import require_binary

# lavfi sources; {size}, {rate} and {seconds} are filled in. Static patterns scroll.
PATTERNS = {
    "testsrc2": "testsrc2=size={size}:rate={rate}:duration={seconds}",
    "testsrc": "testsrc=size={size}:rate={rate}:duration={seconds}",
    "mandelbrot": "mandelbrot=size={size}:rate={rate},trim=duration={seconds}",
    "smptebars": "smptebars=size={size}:rate={rate}:duration={seconds},scroll=horizontal=0.01",
    "rgbtestsrc": "rgbtestsrc=size={size}:rate={rate}:duration={seconds},scroll=vertical=0.01",
    "life": "life=size={size}:rate={rate}:mold=10:ratio=0.3:seed=1,trim=duration={seconds}",
}

# Every pattern also carries a white square that moves a few pixels each frame: some patterns
# barely change between frames at small sizes (testsrc2 at 64x36 repeats frames), and tests
# need neighbouring frames to differ to catch a decoder that returns the wrong one.
_MARKER = (
    "{pattern}[bg];color=c=white:size={box}x{box}:rate={rate}[box];"
    "[bg][box]overlay=x=mod(n*{step}\\,W-w):y=mod(n*{step}\\,H-h):shortest=1"
)

# Encoder arguments per codec: speed over quality, these files are made at test time.
_VIDEO_ARGS = {
    # veryfast (not ultrafast) keeps B-frames, so decoders must reorder as real files need.
    "libx264": ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"],
    "mpeg4": ["-c:v", "mpeg4", "-q:v", "4"],
    "libvpx-vp9": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M"],
    "mjpeg": ["-c:v", "mjpeg", "-q:v", "5", "-pix_fmt", "yuvj420p"],
}
# Audio codec per file extension (AAC elsewhere).
_AUDIO_CODEC = {".webm": "libopus", ".avi": "pcm_s16le", ".wav": "pcm_s16le", ".ogg": "libvorbis"}

# Frames kept of every 10 when making a variable-frame-rate clip: runs of 1/fps steps broken by
# 2/fps and 3/fps gaps, as a phone that drops frames under load writes them.
_VFR_SELECT = "lt(mod(n\\,10)\\,6)+eq(mod(n\\,10)\\,8)"


def vfr_kept_frames(source_frames: int) -> int:
    """How many frames `make_clip(vfr=True)` keeps of `source_frames` (= seconds * fps)."""
    return sum(1 for n in range(source_frames) if n % 10 < 6 or n % 10 == 8)


class MissingToolError(RuntimeError):
    """A command-line tool this needs is not installed; the message says how to install it."""


INSTALL_FFMPEG = ("install ffmpeg (it brings ffprobe): sudo apt-get install ffmpeg (Debian, Ubuntu), "
                  "brew install ffmpeg (macOS), or conda install -c conda-forge ffmpeg")


def require_ffmpeg() -> None:
    """ffmpeg (to make the videos) and ffprobe (the probe stage reads them) on PATH, or one line
    saying how to install them."""
    missing = [name for name in ("ffmpeg", "ffprobe") if shutil.which(name) is None]
    if missing:
        raise MissingToolError(f"{' and '.join(missing)} not found on PATH: {INSTALL_FFMPEG}")


def _run_ffmpeg(args: list[str]) -> None:
    require_ffmpeg()
    cmd = [require_binary("ffmpeg"), "-nostdin", "-hide_banner", "-v", "error", "-y", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({' '.join(cmd)}):\n{done.stderr}")


def _source(pattern: str, *, seconds: float, width: int, height: int, fps: float) -> str:
    """A lavfi graph: the pattern with the moving marker on top."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; choose one of {sorted(PATTERNS)}")
    background = PATTERNS[pattern].format(size=f"{width}x{height}", rate=fps, seconds=seconds)
    box = max(2, min(width, height) // 6)
    step = max(2, min(width, height) // 10)
    return _MARKER.format(pattern=background, box=box, rate=fps, step=step)


def _encoder_args(codec: str, fps: float, gop_seconds: float | None) -> list[str]:
    args = list(_VIDEO_ARGS.get(codec, ["-c:v", codec]))
    if gop_seconds is not None:
        gop = max(1, round(gop_seconds * fps))
        args += ["-g", str(gop)]
        if codec == "libx264":  # fixed GOPs: no extra keyframes at scene changes
            args += ["-keyint_min", str(gop), "-sc_threshold", "0"]
    return args


def _audio_args(path: Path, seconds: float) -> tuple[list[str], list[str]]:
    """Input and output arguments for a sine tone as long as the video."""
    inputs = ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    return inputs, ["-c:a", _AUDIO_CODEC.get(path.suffix.lower(), "aac")]


def make_clip(
    path: str | os.PathLike,
    *,
    seconds: float,
    width: int,
    height: int,
    fps: float,
    codec: str = "libx264",
    gop_seconds: float | None = None,
    pattern: str = "testsrc2",
    vfr: bool = False,
    audio: bool = False,
    rotation: int | None = None,
    encoder_args: tuple[str, ...] = (),
) -> Path:
    """Write a moving test clip. `vfr=True` drops frames irregularly and keeps the real
    timestamps (see `vfr_kept_frames`); `rotation` (clockwise degrees to display upright, as
    PROBE stores it; MP4/MOV only) is written into the track's display matrix; `encoder_args`
    go to ffmpeg after the codec's own (e.g. ("-bf", "2") for MPEG-4 with B-frames)."""
    path = Path(path)
    video_filter = f"select='{_VFR_SELECT}'" if vfr else "null"
    source = _source(pattern, seconds=seconds, width=width, height=height, fps=fps)
    inputs = ["-f", "lavfi", "-i", source]
    outputs = ["-map", "0:v", "-vf", video_filter, *_encoder_args(codec, fps, gop_seconds)]
    outputs += list(encoder_args)
    if vfr:
        # -vsync (not -fps_mode) so that ffmpeg 4.x works too; it keeps the selected frames'
        # own timestamps instead of duplicating frames back to a constant rate.
        outputs += ["-vsync", "vfr"]
    if audio:
        audio_in, audio_out = _audio_args(path, seconds)
        inputs += audio_in
        outputs += ["-map", "1:a", *audio_out, "-shortest"]
    _run_ffmpeg([*inputs, *outputs, str(path)])
    if rotation:
        set_mp4_rotation(path, rotation)
    return path


def make_scene_clip(
    path: str | os.PathLike,
    *,
    scenes: list[tuple[str, float]],
    width: int = 320,
    height: int = 180,
    fps: float = 25,
    codec: str = "libx264",
    gop_seconds: float | None = None,
) -> Path:
    """Scenes of different patterns joined with hard cuts; scene k starts at the sum of the
    earlier scenes' seconds."""
    path = Path(path)
    inputs: list[str] = []
    for pattern, seconds in scenes:
        source = _source(pattern, seconds=seconds, width=width, height=height, fps=fps)
        inputs += ["-f", "lavfi", "-i", f"{source},format=yuv420p,setsar=1"]
    labels = "".join(f"[{k}:v]" for k in range(len(scenes)))
    graph = f"{labels}concat=n={len(scenes)}:v=1:a=0[v]"
    args = [*inputs, "-filter_complex", graph, "-map", "[v]"]
    _run_ffmpeg([*args, *_encoder_args(codec, fps, gop_seconds), str(path)])
    return path


def make_audio_only(path: str | os.PathLike, *, seconds: float = 2.0) -> Path:
    """A file with a sine tone and no video stream (.m4a, .mp4, .wav, .ogg, ...)."""
    path = Path(path)
    audio_in, audio_out = _audio_args(path, seconds)
    _run_ffmpeg([*audio_in, *audio_out, str(path)])
    return path


def make_zero_byte(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_garbage(path: str | os.PathLike, *, size: int = 100_000, seed: int = 0) -> Path:
    """Random bytes under a video file name."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, np.uint8).tobytes())
    return path


def make_truncated(src: str | os.PathLike, dst: str | os.PathLike, keep_fraction: float) -> Path:
    """The first `keep_fraction` of `src`'s bytes, as a download cut short leaves it."""
    if not 0 < keep_fraction < 1:
        raise ValueError(f"keep_fraction must be in (0, 1), got {keep_fraction}")
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst


def make_unknown_codec(path: str | os.PathLike) -> Path:
    """A Matroska file whose video track names a codec ffmpeg does not know.

    Made by writing a small MJPEG Matroska file and overwriting its CodecID string "V_MJPEG"
    with "V_QQQQQ": same length, so every element size stays valid and only the codec is
    unknown. The file is Matroska whatever `path`'s extension."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        known = Path(tmp) / "known.mkv"
        source = _source("testsrc2", seconds=1, width=160, height=90, fps=10)
        _run_ffmpeg(["-f", "lavfi", "-i", source, "-c:v", "mjpeg", "-f", "matroska", str(known)])
        data = known.read_bytes()
    if data.count(b"V_MJPEG") != 1:
        raise RuntimeError("could not find the MJPEG codec id to replace in the Matroska file")
    path.write_bytes(data.replace(b"V_MJPEG", b"V_QQQQQ"))
    return path


# ---- display rotation --------------------------------------------------------------------------

# Track header matrices (a, b, c, d of the 3x3 matrix, 16.16 fixed point) per clockwise angle,
# as cameras write them: a phone held upright stores landscape frames with the 90° matrix.
_ROTATION_MATRICES = {
    0: (1, 0, 0, 1),
    90: (0, 1, -1, 0),
    180: (-1, 0, 0, -1),
    270: (0, -1, 1, 0),
}


def set_mp4_rotation(path: str | os.PathLike, clockwise_degrees: int) -> None:
    """Write the display rotation into the video track header ("tkhd") of an MP4/MOV file.

    Patched in place rather than through ffmpeg because ffmpeg's way to set it changed between
    versions (a `rotate` metadata tag until 5.x, `-display_rotation` from 6.0) and their signs
    differ; the matrix itself is fixed by the ISO-BMFF standard."""
    if clockwise_degrees not in _ROTATION_MATRICES:
        raise ValueError(f"rotation must be 0, 90, 180 or 270, got {clockwise_degrees}")
    path = Path(path)
    data = bytearray(path.read_bytes())
    offset = _video_tkhd_offset(data)
    if offset is None:
        raise ValueError(f"{path} has no MP4 video track header to write a rotation into")
    version = data[offset + 8]
    matrix_at = offset + 8 + 4 + (32 if version == 1 else 20) + 16
    a, b, c, d = _ROTATION_MATRICES[clockwise_degrees]
    values = [a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30]
    data[matrix_at : matrix_at + 36] = b"".join(v.to_bytes(4, "big", signed=True) for v in values)
    path.write_bytes(bytes(data))


def _boxes(data: bytearray, start: int, end: int):
    """(type, offset, size) of the ISO-BMFF boxes between start and end."""
    offset = start
    while offset + 8 <= end:
        size = int.from_bytes(data[offset : offset + 4], "big")
        kind = bytes(data[offset + 4 : offset + 8])
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        elif size == 0:
            size = end - offset
        if size < 8:
            return
        yield kind, offset, size
        offset += size


def _video_tkhd_offset(data: bytearray) -> int | None:
    for kind, moov, moov_size in _boxes(data, 0, len(data)):
        if kind != b"moov":
            continue
        for trak_kind, trak, trak_size in _boxes(data, moov + 8, moov + moov_size):
            if trak_kind != b"trak":
                continue
            children = {k: o for k, o, _ in _boxes(data, trak + 8, trak + trak_size)}
            if b"tkhd" in children and _is_video_track(data, trak, trak_size):
                return children[b"tkhd"]
    return None


def _is_video_track(data: bytearray, trak: int, trak_size: int) -> bool:
    """The track's media handler ("mdia"/"hdlr") is "vide"."""
    for kind, mdia, mdia_size in _boxes(data, trak + 8, trak + trak_size):
        if kind == b"mdia":
            for sub, hdlr, _ in _boxes(data, mdia + 8, mdia + mdia_size):
                if sub == b"hdlr":
                    return bytes(data[hdlr + 16 : hdlr + 20]) == b"vide"
    return False


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
