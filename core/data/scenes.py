"""Synthetic scenes: what one clip shows, drawn from a seed, rendered to frames, encoded to MP4.

A scene (``size`` x ``size`` px) holds up to four **symbols** -- small glyphs (square, circle,
triangle, cross) of distinct colours, one per corner region, on screen the whole clip -- and a
few **balls**: discs of distinct colours, none a symbol's colour, that slide across the middle
band, one at a time, each for several seconds. Symbols never enter the band, so every question's evidence is unambiguous.
A **flash** turns the whole black background one colour of :data:`FLASH_COLOURS` (never a symbol's
or a ball's) for a few seconds: evidence that fills most of the frame, so it survives pooling a
frame to a single token, yet is brief, so only frames that fall inside it see it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dynvlm.data.synth import SynthConfig

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (40, 90, 255),  # lifted from pure blue so it stays bright on black
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}
#: background colours of a flash: a palette of their own, so a flash's colour is nowhere else in the clip
FLASH_COLOURS: dict[str, tuple[int, int, int]] = {
    "orange": (255, 128, 0),
    "purple": (128, 0, 192),
    "grey": (128, 128, 128),
    "brown": (128, 64, 0),
}
SHAPES = ("square", "circle", "triangle", "cross")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")


@dataclass
class Symbol:
    """A glyph at a corner: top-left pixel ``(x, y)``, side ``g`` px."""

    colour: str
    shape: str
    position: str
    x: int
    y: int
    g: int


@dataclass
class Visit:
    """A ball on screen for ``start <= t < start + seconds`` sliding left->right or right->left."""

    colour: str
    start: int
    seconds: int
    direction: str  # "left" or "right": where it moves to

    def seconds_visible(self) -> list[int]:
        return list(range(self.start, self.start + self.seconds))


@dataclass
class Flash:
    """The background takes ``colour`` (of :data:`FLASH_COLOURS`) for ``start <= t < start + seconds``."""

    colour: str
    start: int
    seconds: int

    def seconds_visible(self) -> list[int]:
        return list(range(self.start, self.start + self.seconds))


@dataclass
class Scene:
    """Everything drawn in one video."""

    id: str
    split: str
    duration: int
    size: int
    native_fps: int
    symbols: list[Symbol]
    visits: list[Visit]
    equal_area: bool = True  # symbol shapes light the same number of pixels (see glyph_mask)
    flashes: list[Flash] = field(default_factory=list)

    def signature(self) -> tuple:
        """What makes two clips the same clip (for the no-leak check across splits)."""
        return (
            self.duration,
            tuple((s.colour, s.shape, s.position, s.x, s.y) for s in self.symbols),
            tuple((v.colour, v.start, v.seconds, v.direction) for v in self.visits),
            tuple((f.colour, f.start, f.seconds) for f in self.flashes),
        )

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Scene:
        return Scene(
            **{k: v for k, v in d.items() if k not in ("symbols", "visits", "flashes")},
            symbols=[Symbol(**s) for s in d["symbols"]],
            visits=[Visit(**v) for v in d["visits"]],
            flashes=[Flash(**f) for f in d.get("flashes", [])],
        )


def geometry(size: int) -> dict[str, int]:
    """Pixel layout for a frame side: glyph side ``g``, ball diameter ``b``, middle band rows,
    and ``gap`` (rows between the band and the corner regions, 0 when the frame is too small)."""
    b = max(3, round(size * 0.25))
    g = max(6, round(size * 0.22))  # equal-area shapes stay distinct from 6 px up
    top = (size - b) // 2
    gap = 1 if top - 1 >= g else 0
    return {"g": g, "b": b, "band_top": top, "band_bottom": top + b, "gap": gap}


def _corner_region(position: str, size: int, geo: dict[str, int]) -> tuple[int, int, int, int]:
    """``(x0, x1, y0, y1)`` where a glyph of that corner may be placed (exclusive ends)."""
    half = size // 2
    x0, x1 = (0, half - 1) if position.endswith("left") else (half + 1, size)
    gap = geo["gap"]
    y0, y1 = (0, geo["band_top"] - gap) if position.startswith("top") else (geo["band_bottom"] + gap, size)
    return x0, x1, y0, y1


def draw_scene(rng: np.random.Generator, cfg: SynthConfig, split: str, vid: str) -> Scene:
    """Draw one scene: its duration, symbols at distinct corners, balls in non-overlapping time
    slots, then ``cfg.flashes`` flashes (drawn last, so settings without flashes draw the scenes of
    earlier versions)."""
    geo = geometry(cfg.size)
    g = geo["g"]
    duration = draw_duration(rng, cfg)
    colours = list(COLOURS)
    symbols = []
    corners = rng.permutation(len(POSITIONS))[: cfg.symbols]
    sym_colours = rng.permutation(len(colours))[: cfg.symbols]
    for pos_i, col_i in zip(corners, sym_colours):
        position = POSITIONS[pos_i]
        x0, x1, y0, y1 = _corner_region(position, cfg.size, geo)
        x = int(rng.integers(x0, x1 - g + 1))
        y = int(rng.integers(y0, y1 - g + 1))
        symbols.append(Symbol(colours[col_i], SHAPES[int(rng.integers(len(SHAPES)))], position, x, y, g))
    symbols.sort(key=lambda s: POSITIONS.index(s.position))
    n = int(rng.integers(cfg.min_visits, cfg.max_visits + 1))
    lengths = [int(rng.integers(cfg.min_visit_seconds, cfg.max_visit_seconds + 1)) for _ in range(n)]
    # free seconds spread over n + 1 gaps (inner gaps >= 1 s so visits are separate events)
    slack = duration - sum(lengths) - (n - 1)
    cuts = np.sort(rng.integers(0, slack + 1, size=n))
    visits, t, prev = [], 0, 0
    # balls never share a symbol's colour: a ball's colour is on screen only while the ball is
    used = {int(c) for c in sym_colours}
    ball_colours = [int(c) for c in rng.permutation(len(colours)) if int(c) not in used][:n]
    for i in range(n):
        t += int(cuts[i] - prev) + (1 if i else 0)
        prev = int(cuts[i])
        visits.append(Visit(colours[ball_colours[i]], t, lengths[i], "right" if rng.random() < 0.5 else "left"))
        t += lengths[i]
    flashes = draw_flashes(rng, cfg, duration)
    return Scene(vid, split, duration, cfg.size, cfg.native_fps, symbols, visits, cfg.equal_area, flashes)


def draw_duration(rng: np.random.Generator, cfg: SynthConfig) -> int:
    """A clip's length in seconds: uniform in ``min_duration..max_duration``, or, with
    ``cfg.duration_mix`` (``[[lo, hi], ...]``), one range picked uniformly, then uniform in it."""
    if not cfg.duration_mix:
        return int(rng.integers(cfg.min_duration, cfg.max_duration + 1))
    lo, hi = cfg.duration_mix[int(rng.integers(len(cfg.duration_mix)))]
    return int(rng.integers(lo, hi + 1))


def flash_seconds_cap(duration: int) -> int:
    """The longest flash a clip of ``duration`` s gets: under half of it (at least 1 s), so flashes
    stay a minority of a clip's frames (clips that were mostly flash taught the model that symbols
    sit on coloured backgrounds, and the detail family broke)."""
    return max(1, (duration - 1) // 2)


def draw_flashes(rng: np.random.Generator, cfg: SynthConfig, duration: int) -> list[Flash]:
    """``cfg.flashes`` flashes of distinct colours, each ``min_flash_seconds..max_flash_seconds`` long
    (capped by :func:`flash_seconds_cap`) at a uniform start, in non-overlapping time slots."""
    flashes: list[Flash] = []
    if not cfg.flashes:
        return flashes
    palette = list(FLASH_COLOURS)
    colours = rng.permutation(len(palette))[: cfg.flashes]
    cap = flash_seconds_cap(duration)
    for c in colours:
        for _ in range(100):  # redraw a slot that overlaps an earlier flash (several flashes only)
            seconds = min(cap, int(rng.integers(cfg.min_flash_seconds, cfg.max_flash_seconds + 1)))
            start = int(rng.integers(0, duration - seconds + 1))
            if all(start + seconds <= f.start or f.start + f.seconds <= start for f in flashes):
                break
        flashes.append(Flash(palette[int(c)], start, seconds))
    return sorted(flashes, key=lambda f: f.start)


def _distance(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Euclidean length of ``(dx, dy)``, bit-reproducible: the squares of these half-integer offsets
    are exact and ``sqrt`` is correctly rounded, where ``np.hypot``'s vectorised and scalar paths
    differ in the last bit depending on memory alignment, which flipped ties between pixels and
    so changed glyph shapes (and the clips' bytes) from one process to another."""
    return np.sqrt(dx * dx + dy * dy)


@functools.lru_cache(maxsize=64)
def glyph_mask(shape: str, g: int, equal_area: bool = True) -> np.ndarray:
    """``[g, g]`` bool mask of a glyph (or ``"disc"``, the ball).

    With ``equal_area`` every symbol shape lights exactly ``4g - 4`` pixels (a square outline's
    count), so a token pooled over a whole glyph has the same value whatever its shape: telling
    shapes apart needs several tokens per glyph. Otherwise the shapes are filled/thin and their
    areas differ (a pooled token then leaks the shape through its brightness).
    """
    yy, xx = np.mgrid[0:g, 0:g] + 0.5
    c = g / 2
    if shape == "disc":
        m = _distance(xx - c, yy - c) <= c + 0.1
    elif shape == "square":
        m = np.ones((g, g), bool)
        if equal_area:
            m[1:-1, 1:-1] = False
    elif shape == "circle":  # a ring: its hollow centre separates it from a filled square
        r = _distance(xx - c, yy - c)
        if equal_area:
            # a ring inside the cell's corners (outer radius c - 0.4): unlike a ring touching the
            # cell's edges, it differs from the square outline in every 4 x 4 px pooling cell a 6 px
            # glyph can straddle, so shape is still present at 16 tokens per 16 px frame
            m = (r <= c - 0.4) & (r >= c / 3)
        else:
            m = (r <= c + 0.1) & (r >= max(c - 1.6, 0.75))
    elif shape == "triangle":  # apex up, filled: row y covers a width growing with y
        sides = [g] if not equal_area else range(g, 2, -1)
        m = min((_triangle(k, g) for k in sides), key=lambda k: abs(int(k.sum()) - (4 * g - 4)))
    elif shape == "cross":
        w = 2 if equal_area else round(g / 3)  # two-pixel arms: 2 * 2g - 4 = 4g - 4 pixels
        if not equal_area:
            w = max(1, w - 1 if g % 2 and w % 2 == 0 else w)  # odd sides get centred arms
        lo = (g - w) // 2
        m = np.zeros((g, g), bool)
        m[lo : lo + w, :] = True
        m[:, lo : lo + w] = True
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
    if equal_area and shape != "disc":
        m = _equalise(m, 4 * g - 4, along_radius=shape == "circle")
    m.setflags(write=False)
    return m


def _triangle(k: int, g: int) -> np.ndarray:
    """A filled apex-up triangle of side ``k`` at the bottom centre of a ``g`` x ``g`` cell."""
    yy, xx = np.mgrid[0:k, 0:k] + 0.5
    t = np.abs(xx - k / 2) <= (yy / k) * k / 2 + 0.01
    m = np.zeros((g, g), bool)
    x0 = (g - k) // 2
    m[g - k :, x0 : x0 + k] = t
    return m


def _equalise(m: np.ndarray, target: int, along_radius: bool = False) -> np.ndarray:
    """Remove the pixels farthest from the centre, or grow next to the mask (nearest the centre, or
    ``along_radius`` at the mask's mean radius) until exactly ``target`` pixels are lit (ties broken
    by row, then column)."""
    m = m.copy()
    g = m.shape[0]
    yy, xx = np.mgrid[0:g, 0:g] + 0.5
    dist = _distance(xx - g / 2, yy - g / 2)
    while m.sum() > target:
        ys, xs = np.nonzero(m)
        k = max(range(len(ys)), key=lambda i: (dist[ys[i], xs[i]], -ys[i], -xs[i]))
        m[ys[k], xs[k]] = False
    while m.sum() < target:
        nb = np.zeros_like(m)
        nb[1:] |= m[:-1]
        nb[:-1] |= m[1:]
        nb[:, 1:] |= m[:, :-1]
        nb[:, :-1] |= m[:, 1:]
        ys, xs = np.nonzero(nb & ~m)
        # rings grow along their own radius (they stay rings); filled shapes grow nearest the centre
        radius = dist[m].mean() if along_radius else 0.0
        k = min(range(len(ys)), key=lambda i: (abs(dist[ys[i], xs[i]] - radius), ys[i], xs[i]))
        m[ys[k], xs[k]] = True
    return m


def ball_x(visit: Visit, t: float, size: int, b: int) -> int:
    """Left pixel of the ball at time ``t`` (it slides across the band over the visit)."""
    p = (t - visit.start) / visit.seconds
    lo, hi = 1, size - b - 1
    return int(round(lo + (hi - lo) * (p if visit.direction == "right" else 1 - p)))


def _background(scene: Scene) -> np.ndarray:
    frame = np.zeros((scene.size, scene.size, 3), np.uint8)
    for s in scene.symbols:
        frame[s.y : s.y + s.g, s.x : s.x + s.g][glyph_mask(s.shape, s.g, scene.equal_area)] = COLOURS[s.colour]
    return frame


def render(scene: Scene, t: float, background: np.ndarray | None = None) -> np.ndarray:
    """The uint8 ``[size, size, 3]`` frame shown at time ``t`` seconds (``background``: the
    symbols-only frame, to reuse across frames)."""
    geo = geometry(scene.size)
    symbols = _background(scene) if background is None else background
    frame = symbols.copy()
    for f in scene.flashes:
        if f.start <= t + 1e-9 < f.start + f.seconds:
            frame[~symbols.any(-1)] = FLASH_COLOURS[f.colour]  # every pixel no symbol lights
    b = geo["b"]
    for v in scene.visits:
        if v.start <= t + 1e-9 < v.start + v.seconds:
            x = ball_x(v, t, scene.size, b)
            frame[geo["band_top"] : geo["band_bottom"], x : x + b][glyph_mask("disc", b)] = COLOURS[v.colour]
    return frame


def _visible_planes(frame: Any) -> list[np.ndarray]:
    """The visible bytes of each plane of a PyAV frame: ``[rows, bytes per row]`` uint8 arrays."""
    per_pixel = 3 if frame.format.name == "rgb24" else 1  # packed RGB, or planar YUV
    return [np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width * per_pixel].copy()
            for plane in frame.planes]


def _filled_frame(planes: list[np.ndarray], fmt: str, size: int) -> Any:
    """A ``size`` x ``size`` PyAV frame of ``fmt`` holding ``planes`` (visible bytes per row), with each
    row's padding filled by copies of its last byte: FFmpeg leaves that padding unset, and vectorised
    conversion and encoding code may read it, so no byte the encoder sees is left to chance."""
    import av

    frame = av.VideoFrame(size, size, fmt)
    for plane, rows in zip(frame.planes, planes):
        full = np.pad(rows, ((0, plane.height - rows.shape[0]), (0, plane.line_size - rows.shape[1])), mode="edge")
        plane.update(np.ascontiguousarray(full).tobytes())
    return frame


def write_video(scene: Scene, path: Path, crf: int, pix_fmt: str) -> None:
    """Encode the scene to ``path`` (H.264 in MP4), one frame every ``1 / native_fps`` s."""
    from fractions import Fraction

    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    background = _background(scene)
    with av.open(str(tmp), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=scene.native_fps)
        s.width = s.height = scene.size
        s.pix_fmt = pix_fmt
        # Byte-identical files for one seed (with bit-reproducible pixels, see _distance) need every
        # stage single-threaded, every timestamp explicit and every byte the encoder may read set:
        # x264 (threads, lookahead), the codec context (PyAV opens it lazily, and before it is open
        # its thread count is 0 = "one per core"), the RGB -> YUV conversion (one thread, here rather
        # than inside encode()) and the frames' row padding (_filled_frame).
        s.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "lookahead_threads": "1"}
        s.codec_context.thread_count = 1
        s.codec_context.thread_type = "NONE"
        s.codec_context.time_base = Fraction(1, scene.native_fps)
        for i in range(scene.duration * scene.native_fps):
            rgb = _filled_frame([render(scene, i / scene.native_fps, background).reshape(scene.size, -1)], "rgb24",
                                scene.size)
            frame = _filled_frame(_visible_planes(rgb.reformat(format=pix_fmt, threads=1)), pix_fmt, scene.size)
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    tmp.replace(path)


def encode_jobs_from_stdin() -> None:
    """Worker loop of ``dynvlm.data.synth.encode_in_fresh_processes``: each stdin line is a JSON
    ``[scene dict, path, crf, pix_fmt]``; each written clip's path is printed on its own line."""
    import json
    import sys

    for line in sys.stdin:
        scene, path, crf, pix_fmt = json.loads(line)
        write_video(Scene.from_dict(scene), Path(path), int(crf), str(pix_fmt))
        print(path, flush=True)
