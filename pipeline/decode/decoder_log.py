"""FFmpeg's own error messages, read back from the decoders that print them: how the decord and
ffmpeg backends notice frames that decoded with errors (PyAV captures its log in-process).

FFmpeg conceals decoding errors: the frame comes out, smeared, and the only trace is a line such
as `[h264 @ 0x55d0c8] error while decoding MB 16 10, bytestream -18` on the process's stderr.
About one damaged frame in ten leaves no error line at all, only the concealment at INFO level
(`concealing 21 DC, 21 AC, 21 MV errors in P frame`: the slice ended early, measured on H.264
clips with 1 or 40 random bytes), so the decoders log at INFO with the level printed on each
line (`[h264 @ 0x55d0c8] [info] concealing ...`) and only errors and concealment count.
decord links FFmpeg into this process, so its lines are caught by pointing file descriptor 2 at a
temporary file around the read; the ffmpeg command line prints them on its own stderr.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# DamagedFrames messages keep the decoder's words whole, on one line, up to about this long.
MESSAGE_LIMIT = 300

# `[h264 @ 0x55d0c8a0] message`, or with the level printed `[h264 @ 0x55d0c8a0] [error] message`:
# the component in brackets is the decoder (or a demuxer, a filter).
_LOG_LINE = re.compile(
    r"^\[(?P<component>[\w:-]+) @ 0x[0-9a-f]+\] (?:\[(?P<level>[a-z]+)\] )?(?P<message>.+)$"
)

# Levels at which any message of a decoder means damage; below them only concealment does.
_ERROR_LEVELS = {"panic", "fatal", "error"}

# FFmpeg's error concealment, logged at INFO: a frame (and every frame predicted from it) has
# blocks guessed from their neighbours.
_CONCEALMENT = re.compile(r"^concealing \d+ DC, \d+ AC, \d+ MV errors")

# Whatever the codec is called in the stream, these components are decoders.
_DECODERS = {"h264", "hevc", "mpeg4", "msmpeg4", "mpeg2video", "mpeg1video", "mjpeg", "vp8", "vp9", "av1",
             "libdav1d", "h263", "theora", "wmv3", "vc1", "flv", "prores"}


def decoder_errors(text: str, codec: str | None = None) -> list[str]:
    """The decoder's error and concealment lines in FFmpeg log text, as `codec: message`. Lines
    without a level are taken for errors (the log was set to show no less)."""
    found = []
    for line in text.splitlines():
        match = _LOG_LINE.match(line.strip())
        if not match or not (match["component"] == codec or match["component"] in _DECODERS):
            continue
        message = match["message"].strip()
        if match["level"] in (None, *_ERROR_LEVELS) or is_concealment(message):
            found.append(f"{match['component']}: {message}")
    return found


def is_concealment(message: str) -> bool:
    return bool(_CONCEALMENT.match(message.strip()))


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Everything written to file descriptor 2 inside the block (C libraries included), as lines
    in the yielded list once the block ends; lines that are not FFmpeg's go on to stderr."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            lines.extend(text.splitlines())
            others = [line for line in lines if not _LOG_LINE.match(line.strip())]
            if others:
                sys.stderr.write("\n".join(others) + "\n")


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def damage_message(indices: list[int], errors: list[str], limit: int = MESSAGE_LIMIT) -> str:
    """E.g. `frames 130, 131 decoded with errors: h264: error while decoding MB 16 10, bytestream
    -18; ...`: distinct messages, each whole, as many as fit in about `limit` characters."""
    shown = ", ".join(map(str, indices[:8])) + (f" and {len(indices) - 8} more" if len(indices) > 8 else "")
    head = f"frame{'s' if len(indices) > 1 else ''} {shown} decoded with errors"
    return join_whole(head, errors, limit)


def join_whole(head: str, lines: list[str], limit: int = MESSAGE_LIMIT) -> str:
    """`head: line; line (+N more)` on one line: distinct lines, none cut, within ~`limit`
    characters (a first line longer than that alone is cut at a word, marked with ...)."""
    distinct = list(dict.fromkeys(one_line(line) for line in lines if line.strip()))
    if not distinct:
        return head
    text, taken = f"{head}: ", 0
    for line in distinct:
        if taken and len(text) + len(line) + 2 > limit:
            break
        text += ("; " if taken else "") + line
        taken += 1
    if len(text) > limit and taken == 1:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    left = len(distinct) - taken
    return text + (f" (+{left} more)" if left else "")
