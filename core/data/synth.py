"""Synthetic video-QA: procedurally drawn videos written as real files, with questions whose
accuracy ceilings per token budget are computable.

Each video (``size`` x ``size`` px, ``native_fps`` frames/s, ``min_duration``..``max_duration`` s):

- **symbols**: up to four small glyphs (square, circle, triangle, cross) of distinct colours, one
  per corner region, on screen for the whole video. Telling their shapes apart needs fine spatial
  detail; a frame pooled to one token cannot (the *detail* side of the trade-off).
- **balls**: ``min_visits``..``max_visits`` larger discs of distinct colours that enter, slide
  across the middle band and leave, each visible for ``min_visit_seconds``..``max_visit_seconds``
  seconds, never at the same time. Questions about them need the right frames (the *coverage*
  side): with fewer frames, short visits are missed, gradually.

Question types (``qtype`` -> family): ``shape`` (perception, detail), ``where`` (spatial, detail),
``colour_at`` (perception), ``when`` (temporal, "at what second"), ``order`` (temporal: first/last
ball), ``count`` (counting). Training samples hold all questions of a video as one multi-turn
conversation; ``mc_fraction`` of the turns are asked in the multiple-choice format (answer: a
letter). Every question records ``evidence_groups`` (seconds at which its evidence is on screen;
it is answerable from a set of frames when each group holds one of their timestamps),
``evidence_times`` (their union) and ``needs_detail`` -- see :func:`answerable` and
:func:`ceiling`.

Output folder::

    manifest.json            generator settings and counts (written last: its presence = complete)
    videos/{split}/{id}.mp4  H.264 in MP4 (PyAV)
    {split}.jsonl            LLaVA-style records, one per video (+ "scene" and "questions")
    val_mc.jsonl, test_mc.jsonl   one multiple-choice question per line (options, answer letter,
                             category = family, qtype, evidence_times, needs_detail, ...)

``python -m dynvlm data synth --out DIR --seed S`` runs :func:`main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import re
import shutil
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..video import sample_times
from .annotations import MC_INSTRUCTION, format_mc

log = logging.getLogger(__name__)

VERSION = 1  # bump when the drawing or the questions change: old folders then regenerate

SPLITS = ("train", "val", "test")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (40, 90, 255),  # lifted from pure blue so it stays bright on black
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}
SHAPES = ("square", "circle", "triangle", "cross")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
QTYPES: dict[str, str] = {
    "shape": "perception",
    "where": "spatial",
    "colour_at": "perception",
    "when": "temporal",
    "order": "temporal",
    "count": "counting",
}
TEMPLATES = {
    "shape": "What shape is the {colour} symbol?",
    "where": "Where is the {colour} symbol?",
    "colour_at": "What colour is the ball at second {second}?",
    "when": "At what second does the {colour} ball appear?",
    "first": "What colour is the first ball?",
    "last": "What colour is the last ball?",
    "count": "How many balls appear?",
}
LETTERS = "ABCDEFGH"
WORD_RE = re.compile(r"<video>|<image>|[A-Za-z]+|\d+|[^\sA-Za-z\d]")


class SynthError(ValueError):
    """Bad generator settings, or an output folder holding another dataset."""


@dataclass
class SynthConfig:
    """Generator settings (the keys of ``data.synth`` and the CLI flags).

    ``out`` is the output folder; everything else decides the content and is recorded in the
    manifest, so a folder is reused only when every setting matches.
    """

    out: str
    seed: int = 0
    train: int = 2000  # videos per split
    val: int = 100
    test: int = 300
    size: int = 32  # frame side in px
    native_fps: int = 4
    min_duration: int = 24  # seconds
    max_duration: int = 40
    min_visits: int = 1  # balls per video
    max_visits: int = 4
    min_visit_seconds: int = 2  # several seconds: coverage falls gradually as frames get fewer
    max_visit_seconds: int = 5
    symbols: int = 4  # corner glyphs per video, 1..4
    qtypes: list[str] = field(default_factory=lambda: list(QTYPES))
    mc_fraction: float = 0.5  # share of training turns asked as multiple choice
    options: int = 4  # options per multiple-choice question
    crf: int = 10  # x264 quality (0 = lossless)
    pix_fmt: str = "yuv444p"  # full-resolution colour: at 32 px, 4:2:0 would smear small glyphs
    workers: int = 1  # encoding processes (not part of the content)

    def validate(self) -> None:
        """Raise :class:`SynthError` naming the first bad setting."""
        def bad(key: str, msg: str) -> None:
            raise SynthError(f"synth.{key}: {msg} (got {getattr(self, key)!r})")

        for key in ("train", "val", "test"):
            if getattr(self, key) < 0:
                bad(key, "must be >= 0")
        if self.size < 12 or self.size % 2:
            bad("size", "must be an even number >= 12")
        if self.native_fps < 1:
            bad("native_fps", "must be >= 1")
        if not 1 <= self.min_visits <= self.max_visits:
            bad("min_visits", f"need 1 <= min_visits <= max_visits ({self.max_visits})")
        if self.max_visits > len(COLOURS):
            bad("max_visits", f"at most {len(COLOURS)} (one colour per ball)")
        if not 1 <= self.min_visit_seconds <= self.max_visit_seconds:
            bad("min_visit_seconds", f"need 1 <= min_visit_seconds <= max_visit_seconds ({self.max_visit_seconds})")
        if not 1 <= self.min_duration <= self.max_duration:
            bad("min_duration", f"need 1 <= min_duration <= max_duration ({self.max_duration})")
        need = self.max_visits * (self.max_visit_seconds + 1) - 1
        if self.min_duration < need:
            bad("min_duration", f"must fit max_visits balls of max_visit_seconds with 1 s gaps: >= {need}")
        if not 1 <= self.symbols <= 4:
            bad("symbols", "must be in 1..4")
        unknown = [q for q in self.qtypes if q not in QTYPES]
        if unknown or not self.qtypes:
            bad("qtypes", f"valid question types: {', '.join(QTYPES)}")
        if not 0.0 <= self.mc_fraction <= 1.0:
            bad("mc_fraction", "must be in [0, 1]")
        if not 2 <= self.options <= min(len(SHAPES), len(POSITIONS)):
            bad("options", f"must be in 2..{min(len(SHAPES), len(POSITIONS))}")

    def content_key(self) -> dict[str, Any]:
        """The settings that decide the files (``out`` and ``workers`` do not)."""
        d = asdict(self)
        d.pop("out")
        d.pop("workers")
        d["version"] = VERSION
        return d


def make_config(kwargs: dict[str, Any]) -> SynthConfig:
    """``dict`` (e.g. ``data.synth``) -> validated :class:`SynthConfig`; unknown keys name the valid ones."""
    names = [f.name for f in dataclasses.fields(SynthConfig)]
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        raise SynthError(f"unknown synth setting {unknown[0]!r}; valid: {', '.join(names)}")
    if "out" not in kwargs:
        raise SynthError("synth settings need 'out', the folder to write the dataset to")
    kw = dict(kwargs)
    if isinstance(kw.get("qtypes"), str):
        kw["qtypes"] = [q.strip() for q in kw["qtypes"].split(",") if q.strip()]
    cfg = SynthConfig(**kw)
    cfg.validate()
    return cfg


# ------------------------------------------------------------------------------------------
# scenes


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
class Scene:
    """Everything drawn in one video."""

    id: str
    split: str
    duration: int
    size: int
    native_fps: int
    symbols: list[Symbol]
    visits: list[Visit]

    def signature(self) -> tuple:
        """What makes two clips the same clip (for the no-leak check across splits)."""
        return (
            self.duration,
            tuple((s.colour, s.shape, s.position, s.x, s.y) for s in self.symbols),
            tuple((v.colour, v.start, v.seconds, v.direction) for v in self.visits),
        )

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Scene:
        return Scene(
            **{k: v for k, v in d.items() if k not in ("symbols", "visits")},
            symbols=[Symbol(**s) for s in d["symbols"]],
            visits=[Visit(**v) for v in d["visits"]],
        )


def geometry(size: int) -> dict[str, int]:
    """Pixel layout for a frame side: glyph side ``g``, ball diameter ``b``, middle band rows."""
    b = max(3, round(size * 0.25))
    g = max(3, round(size * 0.22))
    top = (size - b) // 2
    return {"g": g, "b": b, "band_top": top, "band_bottom": top + b}


def _corner_region(position: str, size: int, geo: dict[str, int]) -> tuple[int, int, int, int]:
    """``(x0, x1, y0, y1)`` where a glyph of that corner may be placed (exclusive ends)."""
    half = size // 2
    x0, x1 = (0, half - 1) if position.endswith("left") else (half + 1, size)
    y0, y1 = (0, geo["band_top"] - 1) if position.startswith("top") else (geo["band_bottom"] + 1, size)
    return x0, x1, y0, y1


def draw_scene(rng: np.random.Generator, cfg: SynthConfig, split: str, vid: str) -> Scene:
    """Draw one scene: symbols at distinct corners, then balls in non-overlapping time slots."""
    geo = geometry(cfg.size)
    g = geo["g"]
    duration = int(rng.integers(cfg.min_duration, cfg.max_duration + 1))
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
    ball_colours = rng.permutation(len(colours))[:n]
    for i in range(n):
        t += int(cuts[i] - prev) + (1 if i else 0)
        prev = int(cuts[i])
        visits.append(Visit(colours[ball_colours[i]], t, lengths[i], "right" if rng.random() < 0.5 else "left"))
        t += lengths[i]
    return Scene(vid, split, duration, cfg.size, cfg.native_fps, symbols, visits)


@functools.lru_cache(maxsize=64)
def glyph_mask(shape: str, g: int) -> np.ndarray:
    """``[g, g]`` bool mask of a glyph; the four shapes differ in several pixels even at g = 3.

    ``"circle"`` is a disc of diameter ``g`` (used for balls too).
    """
    yy, xx = np.mgrid[0:g, 0:g] + 0.5
    c = g / 2
    if shape == "square":
        m = np.ones((g, g), bool)
    elif shape == "disc":
        m = np.hypot(xx - c, yy - c) <= c + 0.1
    elif shape == "circle":  # a ring: its hollow centre separates it from the square
        r = np.hypot(xx - c, yy - c)
        m = (r <= c + 0.1) & (r >= max(c - 1.6, 0.75))
    elif shape == "triangle":  # apex up: row y covers a width growing with y
        m = np.abs(xx - c) <= (yy / g) * c + 0.01
    elif shape == "cross":
        w = round(g / 3)
        w = max(1, w - 1 if g % 2 and w % 2 == 0 else w)  # odd sides get centred arms
        lo = (g - w) // 2
        m = np.zeros((g, g), bool)
        m[lo : lo + w, :] = True
        m[:, lo : lo + w] = True
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
    m.setflags(write=False)
    return m


def ball_x(visit: Visit, t: float, size: int, b: int) -> int:
    """Left pixel of the ball at time ``t`` (it slides across the band over the visit)."""
    p = (t - visit.start) / visit.seconds
    lo, hi = 1, size - b - 1
    return int(round(lo + (hi - lo) * (p if visit.direction == "right" else 1 - p)))


def _background(scene: Scene) -> np.ndarray:
    frame = np.zeros((scene.size, scene.size, 3), np.uint8)
    for s in scene.symbols:
        frame[s.y : s.y + s.g, s.x : s.x + s.g][glyph_mask(s.shape, s.g)] = COLOURS[s.colour]
    return frame


def render(scene: Scene, t: float, background: np.ndarray | None = None) -> np.ndarray:
    """The uint8 ``[size, size, 3]`` frame shown at time ``t`` seconds (``background``: the
    symbols-only frame, to reuse across frames)."""
    geo = geometry(scene.size)
    frame = (_background(scene) if background is None else background).copy()
    b = geo["b"]
    for v in scene.visits:
        if v.start <= t + 1e-9 < v.start + v.seconds:
            x = ball_x(v, t, scene.size, b)
            frame[geo["band_top"] : geo["band_bottom"], x : x + b][glyph_mask("disc", b)] = COLOURS[v.colour]
    return frame


def write_video(scene: Scene, path: Path, crf: int, pix_fmt: str) -> None:
    """Encode the scene to ``path`` (H.264 in MP4), one frame every ``1 / native_fps`` s."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    background = _background(scene)
    with av.open(str(tmp), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=scene.native_fps)
        s.width = s.height = scene.size
        s.pix_fmt = pix_fmt
        # one thread and a fixed preset: the same seed gives byte-identical files
        s.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        for i in range(scene.duration * scene.native_fps):
            frame = av.VideoFrame.from_ndarray(render(scene, i / scene.native_fps, background), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    tmp.replace(path)


# ------------------------------------------------------------------------------------------
# questions


@dataclass
class Question:
    """One question about a scene, before its options are ordered."""

    qtype: str
    family: str
    text: str
    answer: str
    distractors: list[str]
    needs_detail: bool
    evidence_groups: list[list[int]]

    @property
    def evidence_times(self) -> list[int]:
        return sorted({t for g in self.evidence_groups for t in g})


def _distractors(rng: np.random.Generator, answer: str, preferred: Sequence[str], pool: Sequence[str], k: int) -> list[str]:
    """``k`` wrong options: ``preferred`` ones first (in random order), then from ``pool``."""
    pref = [p for p in dict.fromkeys(preferred) if p != answer]
    rest = [p for p in pool if p != answer and p not in pref]
    out = [pref[i] for i in rng.permutation(len(pref))] + [rest[i] for i in rng.permutation(len(rest))]
    if len(out) < k:
        raise SynthError(f"not enough distinct options for answer {answer!r}")
    return out[:k]


def ask(rng: np.random.Generator, scene: Scene, qtypes: Sequence[str], options: int) -> list[Question]:
    """One question of each type in ``qtypes`` about ``scene`` (order shuffled)."""
    k = options - 1
    every = list(range(scene.duration))
    colours = list(COLOURS)
    ball_colours = [v.colour for v in scene.visits]
    qs: list[Question] = []
    for qtype in qtypes:
        family = QTYPES[qtype]
        if qtype in ("shape", "where"):
            s = scene.symbols[int(rng.integers(len(scene.symbols)))]
            if qtype == "shape":
                ans, pool = s.shape, SHAPES
            else:
                ans, pool = s.position, POSITIONS
            text = TEMPLATES[qtype].format(colour=s.colour)
            qs.append(Question(qtype, family, text, ans, _distractors(rng, ans, (), pool, k), True, [every]))
        elif qtype == "colour_at":
            v = scene.visits[int(rng.integers(len(scene.visits)))]
            second = int(rng.integers(v.start, v.start + v.seconds))
            text = TEMPLATES[qtype].format(second=second)
            dis = _distractors(rng, v.colour, ball_colours, colours, k)
            qs.append(Question(qtype, family, text, v.colour, dis, False, [v.seconds_visible()]))
        elif qtype == "when":
            v = scene.visits[int(rng.integers(len(scene.visits)))]
            # wrong seconds lie outside this ball's visit, so any frame of the visit tells them apart
            others = [w.start for w in scene.visits if w is not v]
            pool = [str(t) for t in range(scene.duration) if not v.start <= t < v.start + v.seconds]
            dis = _distractors(rng, str(v.start), [str(t) for t in others], pool, k)
            text = TEMPLATES[qtype].format(colour=v.colour)
            qs.append(Question(qtype, family, text, str(v.start), dis, False, [v.seconds_visible()]))
        elif qtype == "order":
            which = "first" if rng.random() < 0.5 else "last"
            v = scene.visits[0] if which == "first" else scene.visits[-1]
            dis = _distractors(rng, v.colour, ball_colours, colours, k)
            qs.append(Question(qtype, family, TEMPLATES[which], v.colour, dis, False, [v.seconds_visible()]))
        elif qtype == "count":
            ans = str(len(scene.visits))
            pool = [str(i) for i in range(1, max(options, len(COLOURS)) + 1)]
            near = [str(i) for i in range(1, options + 1)]  # keep counts 1..options in play first
            dis = _distractors(rng, ans, near, pool, k)
            qs.append(Question(qtype, family, TEMPLATES[qtype], ans, dis, False, [v.seconds_visible() for v in scene.visits]))
    return [qs[i] for i in rng.permutation(len(qs))]


class LetterBalancer:
    """Positions of correct answers: consecutive blocks of ``n`` are permutations of ``0..n-1``,
    so over any prefix no letter is ahead of another by more than one block."""

    def __init__(self, rng: np.random.Generator, n: int) -> None:
        self.rng, self.n, self.bag = rng, n, []

    def next(self) -> int:
        if not self.bag:
            self.bag = [int(i) for i in self.rng.permutation(self.n)]
        return self.bag.pop()


def order_options(q: Question, slot: int) -> tuple[list[str], int]:
    """Options with the answer at index ``slot`` and the distractors around it."""
    opts = list(q.distractors)
    opts.insert(slot, q.answer)
    return opts, slot


def answerable(evidence_groups: Sequence[Sequence[float]], times: Iterable[float]) -> bool:
    """Whether frames at ``times`` (seconds) see every evidence group of a question."""
    seconds = {int(round(t)) for t in times}
    return all(seconds.intersection(int(s) for s in g) for g in evidence_groups)


def ceiling(record: dict[str, Any], fps: float | None = 1.0, max_frames: int | None = None) -> float:
    """Best expected accuracy on one MC record (from ``*_mc.jsonl``) when frames are sampled at
    ``fps`` and capped at ``max_frames``: 1 if every evidence group is seen, else chance.

    Coverage only: a detail question is always "seen"; what compression costs it is the model's.
    """
    times = sample_times(record["duration"], record["native_fps"], fps, max_frames)
    if answerable(record["evidence_groups"], times):
        return 1.0
    return 1.0 / len(record["options"])


# ------------------------------------------------------------------------------------------
# vocabulary


def words(text: str) -> list[str]:
    """The word-level split every synthetic text obeys (``<video>`` stays one word)."""
    return WORD_RE.findall(text)


def vocabulary(max_duration: int = 60, options: int = 4) -> list[str]:
    """Every word the generator can write (questions, answers, option letters, the MC
    instruction, the ``<video>`` placeholder) plus the prompt builder's ``"1s: <image>; ..."``
    scaffolding for seconds ``0..max_duration``; sorted.
    """
    texts: list[str] = [MC_INSTRUCTION, "<video>", "<image>", "s : ; ."]
    texts += [f"{LETTERS[i]}." for i in range(options)]
    texts += list(COLOURS) + list(SHAPES) + list(POSITIONS)
    texts += [str(i) for i in range(max(max_duration, len(COLOURS)) + 1)]
    for template in TEMPLATES.values():
        texts.append(template.format(colour="red", second=0))
    return sorted({w for t in texts for w in words(t)})


# ------------------------------------------------------------------------------------------
# the dataset


def _rng(seed: int, split: str, index: int, attempt: int = 0, stream: int = 0) -> np.random.Generator:
    # one independent stream per clip: the same clip whatever the order or number of workers
    return np.random.default_rng([seed, SPLITS.index(split), index, attempt, stream])


def _encode_one(args: tuple[dict[str, Any], str, int, str]) -> str:
    scene, path, crf, pix_fmt = args
    write_video(Scene.from_dict(scene), Path(path), crf, pix_fmt)
    return path


def _mc_record(scene: Scene, q: Question, j: int, opts: list[str], slot: int, video: str) -> dict[str, Any]:
    return {
        "question_id": f"{scene.id}_q{j}",
        "video": video,
        "question": q.text,
        "options": opts,
        "answer": LETTERS[slot],
        "category": q.family,
        "qtype": q.qtype,
        "needs_detail": q.needs_detail,
        "evidence_times": q.evidence_times,
        "evidence_groups": q.evidence_groups,
        "duration": scene.duration,
        "native_fps": scene.native_fps,
    }


def generate(cfg: SynthConfig | dict[str, Any], force: bool = False, progress: bool = True) -> Path:
    """Write the dataset to ``cfg.out`` unless a complete one with the same settings is there.

    Args:
        cfg: settings (a dict is validated by :func:`make_config`).
        force: regenerate even over a folder made with other settings.
        progress: show a tqdm bar while encoding.

    Returns:
        The output folder.

    Raises:
        SynthError: bad settings, or ``out`` holds a dataset made with other settings (the
            message names the differing keys; nothing is deleted).
    """
    from tqdm.auto import tqdm

    if not isinstance(cfg, SynthConfig):
        cfg = make_config(cfg)
    cfg.validate()
    out = Path(cfg.out)
    manifest_path = out / "manifest.json"
    key = cfg.content_key()
    if manifest_path.exists() and not force:
        try:
            old = json.loads(manifest_path.read_text())["config"]
        except (OSError, ValueError, KeyError) as exc:
            raise SynthError(f"{manifest_path}: unreadable manifest ({exc}); remove the folder or pass force") from None
        if old == key:
            log.info("synthetic dataset in %s is up to date", out)
            return out
        diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
        raise SynthError(
            f"{out} holds a synthetic dataset made with other settings (differ: {', '.join(diff)}); "
            "choose another 'out' or regenerate with --force"
        )
    if manifest_path.exists():
        manifest_path.unlink()
    for split in SPLITS:  # stale clips of a previous, different dataset
        shutil.rmtree(out / "videos" / split, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    # 1. scenes (cheap), redrawn on the rare clash with a clip already in any split
    scenes: dict[str, list[Scene]] = {s: [] for s in SPLITS}
    seen: set[tuple] = set()
    for split in SPLITS:
        for i in range(getattr(cfg, split)):
            for attempt in range(100):
                sc = draw_scene(_rng(cfg.seed, split, i, attempt), cfg, split, f"{split}_{i:06d}")
                if sc.signature() not in seen:
                    break
            seen.add(sc.signature())
            scenes[split].append(sc)

    # 2. videos
    jobs = [
        (asdict(sc), str(out / "videos" / split / f"{sc.id}.mp4"), cfg.crf, cfg.pix_fmt)
        for split in SPLITS
        for sc in scenes[split]
    ]
    bar = tqdm(total=len(jobs), desc=f"synth videos -> {out}", unit="video", disable=not progress)
    if cfg.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(cfg.workers) as pool:
            for _ in pool.map(_encode_one, jobs, chunksize=8):
                bar.update()
    else:
        for job in jobs:
            _encode_one(job)
            bar.update()
    bar.close()

    # 3. questions and annotation files
    counts: dict[str, int] = {}
    for split in SPLITS:
        balancer = LetterBalancer(np.random.default_rng([cfg.seed, SPLITS.index(split), 1 << 20]), cfg.options)
        llava_lines, mc_lines = [], []
        for i, sc in enumerate(scenes[split]):
            rng = _rng(cfg.seed, split, i, stream=1)
            questions = ask(rng, sc, cfg.qtypes, cfg.options)
            video = f"videos/{split}/{sc.id}.mp4"
            conv, qmeta = [], []
            for j, q in enumerate(questions):
                prefix = "<video>\n" if j == 0 else ""
                as_mc = bool(rng.random() < cfg.mc_fraction)
                opts, slot = order_options(q, balancer.next()) if as_mc else (None, None)
                human = format_mc(q.text, opts) if as_mc else q.text
                conv += [{"from": "human", "value": prefix + human}, {"from": "gpt", "value": LETTERS[slot] if as_mc else q.answer}]
                qmeta.append(
                    {"qtype": q.qtype, "family": q.family, "format": "mc" if as_mc else "open", "answer": q.answer,
                     "options": opts, "needs_detail": q.needs_detail, "evidence_times": q.evidence_times,
                     "evidence_groups": q.evidence_groups}
                )
                if split != "train":
                    mopts, mslot = order_options(q, balancer.next())
                    mc_lines.append(_mc_record(sc, q, j, mopts, mslot, video))
            llava_lines.append(
                {"id": sc.id, "video": video, "conversations": conv, "duration": sc.duration,
                 "native_fps": sc.native_fps, "questions": qmeta, "scene": asdict(sc)}
            )
        _write_jsonl(out / f"{split}.jsonl", llava_lines)
        if split != "train":
            _write_jsonl(out / f"{split}_mc.jsonl", mc_lines)
        counts[split] = len(llava_lines)
        if split != "train":
            counts[f"{split}_mc"] = len(mc_lines)
    tmp = manifest_path.with_suffix(".part")
    tmp.write_text(json.dumps({"config": key, "counts": counts}, indent=1, sort_keys=True))
    tmp.replace(manifest_path)  # last: a folder without a manifest is incomplete
    return out


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".part")
    with tmp.open("w") as f:
        for line in lines:
            f.write(json.dumps(line, sort_keys=True) + "\n")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """``dynvlm data synth`` flags: one per :class:`SynthConfig` field (``--min-duration`` ...)."""
    p = argparse.ArgumentParser(prog="dynvlm data synth", description="Generate the synthetic video-QA dataset.")
    defaults = SynthConfig(out="")
    for f in dataclasses.fields(SynthConfig):
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if f.name == "out":
            p.add_argument(flag, required=True, help="output folder")
        elif f.name == "qtypes":
            p.add_argument(flag, default=",".join(value), help=f"comma-separated subset of: {', '.join(QTYPES)}")
        else:
            p.add_argument(flag, type=type(value), default=value, help=f"default {value}")
    p.add_argument("--force", action="store_true", help="regenerate over a folder made with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """``dynvlm data synth --out DIR --seed S ...``; returns the exit status."""
    args = vars(build_parser().parse_args(argv))
    force, quiet = args.pop("force"), args.pop("quiet")
    try:
        out = generate(make_config(args), force=force, progress=not quiet)
    except SynthError as exc:
        print(f"error: {exc}")
        return 2
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"synthetic dataset in {out}: " + ", ".join(f"{k} {v}" for k, v in manifest["counts"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
