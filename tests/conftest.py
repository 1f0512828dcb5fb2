"""Shared test fixtures.

Videos are generated once per test session with `pipeline.demo.synth` (ffmpeg lavfi sources) into a
temporary folder; each fixture returns the path as a string. They are small (160-320 pixels
wide, a few seconds) so that the whole set takes a few seconds to make on two cores.
"""

from __future__ import annotations

import os
from pathlib import Path

# No test reaches the Hugging Face hub: a model named by hub id fails at once instead of retrying
# a download (the hub library reads these when first imported, and Ray workers inherit them).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_UPDATE_CHECK"] = "1"

import pytest  # noqa: E402

from pipeline.demo import synth  # noqa: E402


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


# ---- decodable clips -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def h264_long_gop(video_dir) -> str:
    """12 s H.264 with B-frames and 5 s GOPs (keyframes at frames 0, 125, 250), plus audio."""
    path = video_dir / "h264_long_gop.mp4"
    synth.make_clip(path, seconds=12, width=320, height=180, fps=25, gop_seconds=5, audio=True)
    return str(path)


@pytest.fixture(scope="session")
def vfr_mp4(video_dir) -> str:
    """4 s of 30 fps with frames dropped irregularly: 84 frames, real timestamps."""
    path = video_dir / "vfr.mp4"
    synth.make_clip(path, seconds=4, width=320, height=180, fps=30, vfr=True)
    return str(path)


@pytest.fixture(scope="session")
def vfr_mkv(video_dir) -> str:
    """The same variable frame rate in Matroska, whose timestamps are whole milliseconds."""
    path = video_dir / "vfr.mkv"
    synth.make_clip(path, seconds=4, width=320, height=180, fps=30, vfr=True)
    return str(path)


@pytest.fixture(scope="session")
def mpeg4_avi(video_dir) -> str:
    """MPEG-4 part 2 in AVI at 24 fps, GOPs of 12 (the encoder's default). AVI counts time in
    frames (time base 1/24), which trips any seek or trim time that is not exactly a frame's."""
    path = video_dir / "mpeg4.avi"
    synth.make_clip(path, seconds=4, width=320, height=180, fps=24, codec="mpeg4")
    return str(path)


@pytest.fixture(scope="session")
def mpeg4_bframes_avi(video_dir) -> str:
    """MPEG-4 with B-frames in AVI: packets carry no presentation times (decord misreads it)."""
    path = video_dir / "mpeg4_bframes.avi"
    synth.make_clip(
        path, seconds=4, width=320, height=180, fps=25, codec="mpeg4", encoder_args=("-bf", "2")
    )
    return str(path)


@pytest.fixture(scope="session")
def open_gop_mp4(video_dir) -> str:
    """H.264 with open GOPs: frames after a keyframe in decode order are shown before it."""
    path = video_dir / "open_gop.mp4"
    synth.make_clip(
        path, seconds=6, width=320, height=180, fps=25, gop_seconds=1,
        encoder_args=("-x264-params", "open-gop=1"),
    )  # fmt: skip
    return str(path)


@pytest.fixture(scope="session")
def bframes_ts(video_dir) -> str:
    """H.264 with B-frames in MPEG-TS, which has no frame index (and starts at 1.4 s)."""
    path = video_dir / "bframes.ts"
    synth.make_clip(path, seconds=6, width=320, height=180, fps=25, gop_seconds=1, audio=True)
    return str(path)


@pytest.fixture(scope="session")
def vp9_webm(video_dir) -> str:
    path = video_dir / "vp9.webm"
    synth.make_clip(
        path, seconds=4, width=320, height=180, fps=25, codec="libvpx-vp9", gop_seconds=2
    )
    return str(path)


@pytest.fixture(scope="session")
def gop2_clip(video_dir) -> str:
    """12 s of H.264 with 2 s GOPs (keyframes at frames 0, 50, ..., 250): the source the damaged
    copies of the integrity tests are made from."""
    path = video_dir / "gop2_12s.mp4"
    synth.make_clip(path, seconds=12, width=320, height=180, fps=25, gop_seconds=2)
    return str(path)


@pytest.fixture(scope="session")
def rotated_mp4(video_dir) -> str:
    """Stored landscape 160x90, displayed after turning 90° clockwise; 10 frames."""
    path = video_dir / "rotated90.mp4"
    synth.make_clip(path, seconds=1, width=160, height=90, fps=10, rotation=90)
    return str(path)


@pytest.fixture(scope="session")
def scene_clip(video_dir) -> str:
    """Three 2 s scenes with hard cuts at frames 50 and 100 (25 fps)."""
    path = video_dir / "scenes.mp4"
    scenes = [("testsrc2", 2.0), ("mandelbrot", 2.0), ("smptebars", 2.0)]
    synth.make_scene_clip(path, scenes=scenes, width=160, height=90, fps=25)
    return str(path)


# ---- broken files --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def truncated_mp4(video_dir, h264_long_gop) -> str:
    """Cut in half: the index (moov) written at the end is gone."""
    return str(synth.make_truncated(h264_long_gop, video_dir / "truncated.mp4", 0.5))


@pytest.fixture(scope="session")
def truncated_mkv(video_dir) -> str:
    full = synth.make_clip(video_dir / "full.mkv", seconds=4, width=320, height=180, fps=25)
    return str(synth.make_truncated(full, video_dir / "truncated.mkv", 0.5))


@pytest.fixture(scope="session")
def garbage_mp4(video_dir) -> str:
    return str(synth.make_garbage(video_dir / "garbage.mp4"))


@pytest.fixture(scope="session")
def zero_byte_mp4(video_dir) -> str:
    return str(synth.make_zero_byte(video_dir / "empty.mp4"))


@pytest.fixture(scope="session")
def audio_only(video_dir) -> str:
    return str(synth.make_audio_only(video_dir / "audio_only.m4a"))


@pytest.fixture(scope="session")
def unknown_codec_mkv(video_dir) -> str:
    return str(synth.make_unknown_codec(video_dir / "unknown_codec.mkv"))


# ---- tiny models, built once for the whole session -----------------------------------------------
# Random weights saved with `save_pretrained` and loaded back through the real loading code. Tests
# only read these folders; a test that needs another model builds its own.


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    from pipeline.models.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    from pipeline.models.tiny_lm import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("models") / "tiny-lm")


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> str:
    from pipeline.models.tiny_lm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("models") / "tiny-vlm")


@pytest.fixture(scope="session")
def lm_server(tiny_lm, tmp_path_factory):
    """A real `transformers serve` of the tiny LM, started once (seconds on 2 cores) for the
    engine's and the tag stages' tests: (model folder, base URL)."""
    from serving import transformers_serve

    with transformers_serve(tiny_lm, tmp_path_factory.mktemp("serve-lm") / "serve.log") as url:
        yield tiny_lm, url


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (starting Ray costs seconds)."""
    import ray

    from pipeline.run.runner import ensure_ray

    # Workers unpickle test-defined stages by module name: let them import from tests/.
    here = os.path.dirname(__file__)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    # At least two CPUs, so that tests can see workers run side by side on any machine; one
    # logical GPU, so that stages asking for one schedule their steps as on a GPU node (the
    # steps themselves run on the CPU).
    ray.init(num_cpus=max(2, os.cpu_count() or 1), num_gpus=1, include_dashboard=False)
    ensure_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_out(tmp_path_factory, ray_session) -> Path:
    """`tvr demo` run once for the session (about a minute): test_cli and test_docs_commands read it."""
    import contextlib
    import io

    from pipeline.cli import main

    out = tmp_path_factory.mktemp("demo") / "tvr-demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--out", str(out)])
    assert code == 0, printed.getvalue()
    return out


# ---- every output a test leaves must pass `tvr verify` -------------------------------------------


def pytest_configure(config):
    config.addinivalue_line("markers", "leaves_damage: the test leaves output that `tvr verify` must reject")


@pytest.fixture(autouse=True)
def verify_test_outputs(request):
    """After each test, `tvr verify` every pipeline output it left under its tmp_path."""
    checked = "tmp_path" in request.fixturenames and not request.node.get_closest_marker("leaves_damage")
    tmp_path = request.getfixturevalue("tmp_path") if checked else None
    yield
    if tmp_path is None:
        return
    from pipeline.flow import verify_outputs

    for marker in sorted(tmp_path.glob("**/videos/LATEST")):
        report = verify_outputs(str(marker.parent.parent))
        assert report.ok, f"the test's output fails `tvr verify`:\n{report.render()}"
