"""dynvlm.data.video: real files written with PyAV, decoded with decord and PyAV.

Every test frame carries its own index as 8 black/white stripes, so a decoded frame says which
source frame it is and timestamps can be checked against it exactly.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from dynvlm.data.video import VideoReadError, read_video, sample_indices, sample_times

STRIPE = 4  # px per bit; 8 bits need a width of at least 32


def _frame(i: int, w: int, h: int) -> np.ndarray:
    a = np.zeros((h, w, 3), np.uint8)
    for b in range(8):
        if (i >> b) & 1:
            a[:, b * STRIPE : (b + 1) * STRIPE] = 255
    return a


def _index_of(frame: np.ndarray) -> int:
    bits = [frame[:, b * STRIPE + 1 : (b + 1) * STRIPE - 1].mean() > 128 for b in range(8)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def _has_encoder(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except Exception:  # noqa: BLE001
        return False
    return True


def write_video(path: Path, codec: str, fmt: str, w: int, h: int, rate: Fraction | int, n: int, pix: str = "yuv420p") -> Path:
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, pix
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(_frame(i, w, h), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


# (file name, codec, container, width, height, frame rate, frames, pixel format)
CASES = [
    ("h264.mp4", "libx264", "mp4", 32, 24, 4, 22, "yuv420p"),
    ("h264_odd.mp4", "libx264", "mp4", 33, 17, Fraction(30000, 1001), 75, "yuv444p"),
    ("mpeg4.mkv", "mpeg4", "matroska", 35, 19, 7, 30, "yuv420p"),
    ("vp9.webm", "libvpx-vp9", "webm", 34, 18, Fraction(5, 2), 12, "yuv420p"),
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, tuple[Path, float, int]]:
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for name, codec, fmt, w, h, rate, n, pix in CASES:
        if not _has_encoder(codec):
            continue  # reported by test_codec_available
        out[name] = (write_video(root / name, codec, fmt, w, h, rate, n, pix), float(rate), n)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_both_backends_agree_and_timestamps_are_real(videos, case):
    name, _, _, w, h, rate, n, _ = case
    if name not in videos:
        pytest.skip(f"encoder {case[1]} is not in this PyAV build")
    path = videos[name][0]
    clips = {b: read_video(path, fps=1.0, max_frames=128, backend=b) for b in ("decord", "pyav")}
    last = (n - 1) / float(rate)
    expected_t = int(np.floor(last + 1e-9)) + 1  # one frame per second from 0 to the last frame
    for backend, clip in clips.items():
        assert clip.backend == backend
        assert clip.frames.dtype == np.uint8 and clip.frames.shape == (expected_t, h, w, 3), backend
        assert clip.native_fps == pytest.approx(float(rate), rel=1e-3)
        for k, (frame, t) in enumerate(zip(clip.frames, clip.timestamps)):
            src = _index_of(frame)
            assert src == round(t * float(rate)), (backend, t, src)  # the timestamp is that frame's own
            # the frame on screen at second k: shown at or before k, the next one after k
            assert t <= k + 1e-6 < t + 1 / float(rate), (backend, k, t)
        assert np.all(np.diff(clip.timestamps) > 0)
    d, p = clips["decord"], clips["pyav"]
    np.testing.assert_allclose(d.timestamps, p.timestamps, atol=2e-3)
    diff = np.abs(d.frames.astype(int) - p.frames.astype(int))
    assert diff.mean() < 3.0, f"decord and PyAV frames differ by {diff.mean():.2f} on average"
    assert np.percentile(diff, 99) <= 48  # colour conversion differs only at a few edge pixels


def test_codec_available():
    # the containers/codecs the acceptance names must exist for the test above to run them
    for codec in ("libx264", "mpeg4"):
        assert _has_encoder(codec), f"PyAV here has no {codec} encoder"


def test_max_frames_caps_by_truncated_linspace(videos):
    path, rate, n = videos["h264_odd.mp4"]  # 75 frames at 29.97 fps -> 3 s -> 3 frames at 1 fps
    for backend in ("decord", "pyav"):
        all_frames = read_video(path, fps=None, max_frames=None, backend=backend)
        assert len(all_frames.timestamps) == n
        capped = read_video(path, fps=None, max_frames=10, backend=backend)
        want = np.linspace(0, n - 1, 10).astype(int)
        assert [_index_of(f) for f in capped.frames] == list(want)
        np.testing.assert_allclose(capped.timestamps, np.asarray(all_frames.timestamps)[want], atol=1e-6)


def test_video_shorter_than_max_frames_returns_every_sampled_frame(videos):
    path, rate, n = videos["h264.mp4"]  # 22 frames at 4 fps: 5.25 s -> 6 frames at 1 fps
    clip = read_video(path, fps=1.0, max_frames=64)
    assert clip.frames.shape[0] == 6 and clip.timestamps == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert clip.duration == pytest.approx(n / rate, abs=1e-3)
    two = read_video(path, fps=2.0, max_frames=64)
    assert two.timestamps == [k / 2 for k in range(11)]


def test_sample_indices_rules():
    times = np.arange(40) / 4.0  # 10 s at 4 fps
    assert sample_indices(times, 1.0, None) == list(range(0, 40, 4))
    assert sample_indices(times, 1.0, 4) == [0, 12, 24, 36]  # linspace(0, 9, 4) -> 0, 3, 6, 9 seconds
    assert sample_indices(times, 8.0, None) == list(range(40))  # faster than the stream: each frame once
    assert sample_indices([], 1.0, 4) == []
    assert sample_times(10.0, 4.0, 1.0, 4) == [0.0, 3.0, 6.0, 9.0]


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_image_is_one_frame(tmp_path, suffix):
    from PIL import Image

    arr = _frame(165, 33, 21)
    Image.fromarray(arr).save(tmp_path / f"x{suffix}", quality=95)
    clip = read_video(tmp_path / f"x{suffix}")
    assert clip.frames.shape == (1, 21, 33, 3) and clip.timestamps == [0.0] and clip.backend == "image"
    assert _index_of(clip.frames[0]) == 165


def _bad_files(tmp_path: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    files = {
        "missing": tmp_path / "missing.mp4",
        "empty": tmp_path / "empty.mp4",
        "truncated": tmp_path / "truncated.mp4",
        "not_video": tmp_path / "notes.mp4",
        "zero_frames": tmp_path / "zero.mkv",
        "directory": tmp_path / "dir.mp4",
        "bad_image": tmp_path / "bad.png",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 3])  # mp4 index (moov) is lost
    files["not_video"].write_bytes(b"this is a text file, not a video\n" * 20)
    files["directory"].mkdir()
    files["bad_image"].write_bytes(b"\x89PNG\r\n garbage")
    # a Matroska header with a video track and no frames
    c = av.open(str(files["zero_frames"]), "w", format="matroska")
    s = c.add_stream("mpeg4", rate=4)
    s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
    c.start_encoding()
    c.close()
    return files


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_bad_input_raises_naming_the_file(tmp_path, videos, backend):
    for kind, path in _bad_files(tmp_path, videos["h264.mp4"][0]).items():
        with pytest.raises(VideoReadError) as err:
            read_video(path, backend=backend)
        assert str(path) in str(err.value), kind
        assert err.value.path == str(path)


def test_zero_frame_stream_is_reported_as_such(tmp_path, videos):
    header = videos["mpeg4.mkv"][0].read_bytes()
    path = tmp_path / "header_only.mkv"
    path.write_bytes(header[:600])  # header and track entry survive, no frame does
    with pytest.raises(VideoReadError, match="no frames"):
        read_video(path, backend="pyav")


def test_truncated_mkv_returns_the_frames_that_survive(tmp_path, videos):
    data = videos["mpeg4.mkv"][0].read_bytes()
    path = tmp_path / "half.mkv"
    path.write_bytes(data[: len(data) * 2 // 3])
    clip = read_video(path, fps=None, backend="pyav")
    assert 0 < clip.frames.shape[0] < 30
    assert [_index_of(f) for f in clip.frames] == list(range(clip.frames.shape[0]))


def test_fallback_to_pyav_when_decord_fails_on_a_file(tmp_path):
    # a raw H.264 elementary stream has no container timing: decord refuses it, PyAV reads it
    path = write_video(tmp_path / "raw.h264", "libx264", "h264", 32, 32, 4, 12)
    with pytest.raises(VideoReadError):
        read_video(path, backend="decord")
    clip = read_video(path, fps=None, backend="auto")
    assert clip.backend == "pyav" and any("decord" in n for n in clip.notes)
    assert [_index_of(f) for f in clip.frames] == list(range(12))


def test_fallback_to_pyav_when_decord_is_missing(monkeypatch, videos):
    monkeypatch.setitem(sys.modules, "decord", None)  # makes `import decord` raise ImportError
    clip = read_video(videos["h264.mp4"][0], backend="auto")
    assert clip.backend == "pyav" and clip.notes == ["decord is not installed"]
    with pytest.raises(VideoReadError, match="no backend|not installed"):
        read_video(videos["h264.mp4"][0], backend="decord")


def test_unknown_backend_names_the_choices(videos):
    with pytest.raises(ValueError, match="auto, decord, pyav"):
        read_video(videos["h264.mp4"][0], backend="opencv")
