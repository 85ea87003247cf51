"""Questions about a scene, their multiple-choice options, accuracy ceilings and the word list.

Question types (``qtype`` -> family): ``shape`` (perception, needs detail), ``where`` (spatial,
needs detail), ``colour_at`` (perception), ``when`` (temporal, "at what second"), ``order``
(temporal: first/last ball), ``count`` (counting), ``seen`` (presence: which colour of ball
appears; the wrong options are colours nowhere in the clip, so one kept frame of the ball's
visit answers it), ``flash`` (presence: the colour of the clip's one full-frame flash; the wrong
options are the other flash colours, so one kept frame inside the flash answers it, even pooled to a
single token). Each records ``evidence_groups``: the seconds
at which its evidence is on screen; a set of frames can answer it when every group holds one of
their timestamps (:func:`answerable`), which gives accuracy ceilings per budget (:func:`ceiling`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynvlm.budget import uniform_indices
from dynvlm.data.annotations import MC_INSTRUCTION
from dynvlm.data.scenes import COLOURS, FLASH_COLOURS, POSITIONS, SHAPES, Scene, render
from dynvlm.data.video import sample_times

QTYPES: dict[str, str] = {
    "shape": "perception",
    "where": "spatial",
    "colour_at": "perception",
    "when": "temporal",
    "order": "temporal",
    "count": "counting",
    "seen": "presence",
    "flash": "presence",
}
#: question types about balls: they need every clip to have one
BALL_QTYPES = ("colour_at", "when", "order", "count", "seen")
#: the question types a dataset asks unless ``qtypes`` says otherwise
DEFAULT_QTYPES = ("shape", "where", "colour_at", "when", "order", "count")
TEMPLATES = {
    "shape": "What shape is the {colour} symbol?",
    "where": "Where is the {colour} symbol?",
    "colour_at": "What colour is the ball at second {second}?",
    "when": "At what second does the {colour} ball appear?",
    "first": "What colour is the first ball?",
    "last": "What colour is the last ball?",
    "count": "How many balls appear?",
    "seen": "What colour balls appear?",
    "flash": "What colour is the flash?",
}
#: the fewest tokens per frame ``M`` (frames average-pooled to a ``sqrt(M) x sqrt(M)`` grid) at which a
#: question's answer is still in a 16 px frame's pixels, by construction: an equal-area 6 px glyph lies
#: inside one cell up to M = 4 (every shape pools to the same value) and straddles 4 x 4 px cells
#: differently per shape at M = 16; a flash fills most of every cell at any M. Checked on decoded
#: frames by tests/test_evidence.py (:func:`evidence_present`).
EVIDENCE_TOKENS = {"shape": 16, "flash": 1}
LETTERS = "ABCDEFGH"
WORD_RE = re.compile(r"<video>|<image>|[A-Za-z]+|\d+|[^\sA-Za-z\d]")


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
        raise ValueError(f"not enough distinct options for answer {answer!r}")
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
        elif qtype == "seen":
            v = scene.visits[int(rng.integers(len(scene.visits)))]
            # wrong options are colours nowhere in the clip: naming a colour the kept frames show
            # answers it, and a clip whose kept frames miss the ball leaves a guess
            shown = set(ball_colours) | {sym.colour for sym in scene.symbols}
            absent = [c for c in colours if c not in shown]
            dis = _distractors(rng, v.colour, (), absent, k)
            qs.append(Question(qtype, family, TEMPLATES[qtype], v.colour, dis, False, [v.seconds_visible()]))
        elif qtype == "flash":
            f = scene.flashes[0]
            # wrong options: the other flash colours, which nothing in the clip ever shows
            dis = _distractors(rng, f.colour, (), list(FLASH_COLOURS), k)
            qs.append(Question(qtype, family, TEMPLATES[qtype], f.colour, dis, False, [f.seconds_visible()]))
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


def frame_times(record: dict[str, Any], fps: float | None = 1.0, max_frames: int | None = None,
                keep: int | None = None) -> list[float]:
    """Timestamps a model sees of a record's clip: decoded at ``fps`` up to ``max_frames``
    (:func:`dynvlm.data.video.sample_times`), then ``keep`` of them by truncated linspace (the budget
    policy's second cap, ``N_max // M``)."""
    times = sample_times(record["duration"], record["native_fps"], fps, max_frames)
    if keep is not None and 0 < keep < len(times):
        times = [times[i] for i in uniform_indices(len(times), keep)]
    return times


def ceiling(record: dict[str, Any], fps: float | None = 1.0, max_frames: int | None = None, keep: int | None = None) -> float:
    """Best expected accuracy on one MC record (a line of ``*_mc.jsonl``) for the frames of
    :func:`frame_times`: 1 if every evidence group is seen, else chance (1 / options).

    Coverage only: a detail question is always "seen"; what compression costs it is the model's.
    """
    return coverage_ceiling(record["evidence_groups"], frame_times(record, fps, max_frames, keep), len(record["options"]))


def coverage_ceiling(evidence_groups: Sequence[Sequence[float]], times: Iterable[float], options: int) -> float:
    """Best expected accuracy on one question from frames at ``times`` (seconds): 1 when every
    evidence group holds one of them (:func:`answerable`), else chance, ``1 / options``."""
    return 1.0 if answerable(evidence_groups, times) else 1.0 / options


def ceilings(records: Iterable[dict[str, Any]], fps: float | None = 1.0, max_frames: int | None = None,
             keep: int | None = None) -> dict[str, float]:
    """Mean :func:`ceiling` per ``category`` and ``"overall"`` (to print beside measured accuracy)."""
    per: dict[str, list[float]] = {}
    for r in records:
        c = ceiling(r, fps, max_frames, keep)
        per.setdefault(r.get("category", ""), []).append(c)
        per.setdefault("overall", []).append(c)
    return {k: float(np.mean(v)) for k, v in per.items()}


# ------------------------------------------------------------------------------------------
# evidence in pooled pixels


def pool_pixels(frame: np.ndarray, tokens: int) -> np.ndarray:
    """``[H, W, 3]`` frame -> ``[a, a, 3]`` float means of an ``a x a`` grid of cells, ``a = isqrt(tokens)``
    (windows as ``adaptive_avg_pool2d``'s: the grid the ``pool`` compressor makes of a square frame)."""
    a = math.isqrt(int(tokens))
    h, w = frame.shape[:2]
    x = frame.astype(np.float64)
    out = np.empty((a, a, x.shape[2]))
    for i in range(a):
        for j in range(a):
            cell = x[i * h // a : -(-(i + 1) * h // a), j * w // a : -(-(j + 1) * w // a)]
            out[i, j] = cell.mean((0, 1))
    return out


def option_scene(scene: Scene, record: dict[str, Any], option: str) -> Scene:
    """``scene`` with the answer of ``record`` (a ``shape`` or ``flash`` MC record about it) replaced by
    ``option``: the named symbol drawn with that shape, or the flash in that colour."""
    if record["qtype"] == "shape":
        colour = next(c for c in COLOURS if f" {c} " in record["question"])
        symbols = [dataclasses.replace(s, shape=option) if s.colour == colour else s for s in scene.symbols]
        return dataclasses.replace(scene, symbols=symbols)
    if record["qtype"] == "flash":
        return dataclasses.replace(scene, flashes=[dataclasses.replace(scene.flashes[0], colour=option)])
    raise ValueError(f"option_scene: no counterfactual for qtype {record['qtype']!r}; valid: shape, flash")


def evidence_present(frame: np.ndarray, scene: Scene, record: dict[str, Any], t: float, tokens: int,
                     tol: float = 4.0) -> bool:
    """Whether a frame pooled to ``tokens`` per frame still answers ``record``: the frame at ``t``
    rendered with each option as the answer (:func:`option_scene`) is pooled (:func:`pool_pixels`);
    the answer is present when every wrong option pools more than ``tol`` (0-255 levels, above codec
    noise) away from the right one and ``frame`` (decoded, ``[H, W, 3]`` uint8) pools nearest the right one.
    """
    pooled = {o: pool_pixels(render(option_scene(scene, record, o), t), tokens) for o in record["options"]}
    answer = record["options"][LETTERS.index(record["answer"])]
    seen = pool_pixels(frame, tokens)

    def dist(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max())

    apart = all(dist(pooled[o], pooled[answer]) > tol for o in pooled if o != answer)
    return apart and min(pooled, key=lambda o: dist(pooled[o], seen)) == answer


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
    texts += list(COLOURS) + list(FLASH_COLOURS) + list(SHAPES) + list(POSITIONS)
    texts += [str(i) for i in range(max(max_duration, len(COLOURS)) + 1)]
    for template in TEMPLATES.values():
        texts.append(template.format(colour="red", second=0))
    return sorted({w for t in texts for w in words(t)})
