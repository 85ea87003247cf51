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
:func:`ceiling`. Drawing lives in :mod:`dynvlm.data.scenes`, questions in
:mod:`dynvlm.data.questions`; this module writes the dataset and is the command line.

Coverage ceilings of the default settings (seed 0, 300 test clips = 1800 questions; frames
decoded at 1 fps, then ``keep`` of them by truncated linspace, as the budget policy does with
``N_max // M``), from :func:`ceilings`, in %:

==== ========== ======= ======== ======== =======
keep perception spatial temporal counting overall
==== ========== ======= ======== ======== =======
32   100        100     100      100      100
16   99.2       100     97.9     95.2     98.2
8    90.6       100     81.5     64.2     84.8
4    74.1       100     47.2     32.2     62.5
1    64.0       100     28.0     25.5     51.6
==== ========== ======= ======== ======== =======

(``shape`` and ``where`` are always "seen": what they lose is resolution, by construction --
``where`` needs a 2 x 2 token grid, ``shape`` tokens finer than a glyph, see
:func:`dynvlm.data.scenes.glyph_mask`.)

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
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dynvlm.data.annotations import format_mc
from dynvlm.data.questions import (  # noqa: F401 - re-exported: the generator's public names live here too
    BALL_QTYPES,
    DEFAULT_QTYPES,
    LETTERS,
    QTYPES,
    TEMPLATES,
    LetterBalancer,
    Question,
    answerable,
    ask,
    ceiling,
    ceilings,
    frame_times,
    order_options,
    vocabulary,
    words,
)
from dynvlm.data.scenes import (  # noqa: F401
    COLOURS,
    FLASH_COLOURS,
    POSITIONS,
    SHAPES,
    Flash,
    Scene,
    Symbol,
    Visit,
    draw_scene,
    geometry,
    glyph_mask,
    render,
    write_video,
)

log = logging.getLogger(__name__)

VERSION = 5  # bump when the drawing or the questions change: old folders then regenerate

SPLITS = ("train", "val", "test")
INCOMPLETE = ".synth-incomplete"  # present while a generation runs (or after it crashed)


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
    max_visits: int = 3  # symbols + max_visits <= 7 colours (balls never share a symbol's colour)
    min_visit_seconds: int = 2  # several seconds: coverage falls gradually as frames get fewer
    max_visit_seconds: int = 5
    symbols: int = 4  # corner glyphs per video, 1..4
    flashes: int = 0  # full-frame background flashes per video (coverage evidence that survives pooling)
    min_flash_seconds: int = 1
    max_flash_seconds: int = 3
    # [[lo, hi], ...]: each clip's length from one range picked at random (e.g. short and long clips
    # mixed in one test set); empty = min_duration..max_duration
    duration_mix: list[list[int]] = field(default_factory=list)
    equal_area: bool = True  # all symbol shapes light the same pixel count: pooling one glyph hides its shape
    # `seen` is opt-in: its wrong options need colours absent from the clip (fewer symbols/balls)
    qtypes: list[str] = field(default_factory=lambda: list(DEFAULT_QTYPES))
    # clips at least `long_seconds` long are asked `long_qtypes` instead of `qtypes` (0 and [] = every clip
    # is asked `qtypes`): questions about long videos are more often about events across time than detail
    long_seconds: int = 0
    long_qtypes: list[str] = field(default_factory=list)
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
        if self.size < 16 or self.size % 2:
            bad("size", "must be an even number >= 16")
        if self.native_fps < 1:
            bad("native_fps", "must be >= 1")
        if not 0 <= self.min_visits <= self.max_visits:
            bad("min_visits", f"need 0 <= min_visits <= max_visits ({self.max_visits})")
        asked = [*self.qtypes, *self.long_qtypes]
        balls = [q for q in asked if q in BALL_QTYPES]
        if balls and self.min_visits < 1:
            bad("min_visits", f"qtype {balls[0]!r} asks about a ball: every clip needs one (min_visits >= 1)")
        if "flash" in asked and self.flashes != 1:
            bad("flashes", "qtype 'flash' asks the colour of the clip's one flash: set flashes: 1")
        if not 0 <= self.flashes <= len(FLASH_COLOURS):
            bad("flashes", f"must be in 0..{len(FLASH_COLOURS)} (one colour per flash)")
        if not 1 <= self.min_flash_seconds <= self.max_flash_seconds:
            bad("min_flash_seconds", f"need 1 <= min_flash_seconds <= max_flash_seconds ({self.max_flash_seconds})")
        if self.max_visits > len(COLOURS):
            bad("max_visits", f"at most {len(COLOURS)} (one colour per ball)")
        if not 1 <= self.min_visit_seconds <= self.max_visit_seconds:
            bad("min_visit_seconds", f"need 1 <= min_visit_seconds <= max_visit_seconds ({self.max_visit_seconds})")
        if not 1 <= self.min_duration <= self.max_duration:
            bad("min_duration", f"need 1 <= min_duration <= max_duration ({self.max_duration})")
        need = self.max_visits * (self.max_visit_seconds + 1) - 1
        if self.min_duration < need:
            bad("min_duration", f"must fit max_visits balls of max_visit_seconds with 1 s gaps: >= {need}")
        for r in self.duration_mix:
            if len(r) != 2 or not max(1, need) <= r[0] <= r[1]:
                bad("duration_mix", f"each entry is [lo, hi] seconds with {max(1, need)} <= lo <= hi")
        if self.flashes > 1 and min(lo for lo, _ in self.duration_ranges()) < self.flashes * 2:
            bad("flashes", "several flashes need clips of at least 2 s per flash")
        if not 1 <= self.symbols <= 4:
            bad("symbols", "must be in 1..4")
        unknown = [q for q in self.qtypes if q not in QTYPES]
        if unknown or not self.qtypes:
            bad("qtypes", f"valid question types: {', '.join(QTYPES)}")
        if any(q not in QTYPES for q in self.long_qtypes):
            bad("long_qtypes", f"valid question types: {', '.join(QTYPES)}")
        if bool(self.long_qtypes) != (self.long_seconds > 0):
            bad("long_seconds", "set long_seconds >= 1 and long_qtypes together (or neither)")
        if not 0.0 <= self.mc_fraction <= 1.0:
            bad("mc_fraction", "must be in [0, 1]")
        if not 2 <= self.options <= min(len(SHAPES), len(POSITIONS)):
            bad("options", f"must be in 2..{min(len(SHAPES), len(POSITIONS))}")
        if self.symbols + self.max_visits > len(COLOURS):
            bad("max_visits", f"symbols + max_visits must be <= {len(COLOURS)} (balls and symbols never share a colour)")
        if "seen" in asked and self.symbols + self.max_visits + self.options - 1 > len(COLOURS):
            # `seen`'s wrong options are colours nowhere in the clip
            bad("max_visits", f"symbols + max_visits + options - 1 must be <= {len(COLOURS)} with qtype 'seen' "
                f"(its wrong options are colours no symbol or ball has); got {self.symbols} + {self.max_visits} + "
                f"{self.options} - 1")

    def qtypes_for(self, duration: int) -> list[str]:
        """The question types asked about a clip of ``duration`` seconds: ``long_qtypes`` from
        ``long_seconds`` on (when set), else ``qtypes``."""
        return list(self.long_qtypes) if self.long_qtypes and duration >= self.long_seconds else list(self.qtypes)

    def duration_ranges(self) -> list[tuple[int, int]]:
        """The ``(lo, hi)`` ranges clip lengths are drawn from (:func:`dynvlm.data.scenes.draw_duration`)."""
        return [(int(lo), int(hi)) for lo, hi in self.duration_mix] or [(self.min_duration, self.max_duration)]

    def content_key(self) -> dict[str, Any]:
        """The settings that decide the files (``out`` and ``workers`` do not)."""
        d = asdict(self)
        d.pop("out")
        d.pop("workers")
        if not self.long_qtypes:  # off: the keys of datasets made before the option existed
            d.pop("long_qtypes")
            d.pop("long_seconds")
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
    if "duration_mix" in kw and hasattr(kw["duration_mix"], "__iter__"):
        kw["duration_mix"] = [[int(v) for v in r] for r in kw["duration_mix"]]  # also an omegaconf ListConfig
    for key in ("qtypes", "long_qtypes"):
        if isinstance(kw.get(key), str):
            kw[key] = [q.strip() for q in kw[key].split(",") if q.strip()]
        if key in kw:
            if not hasattr(kw[key], "__iter__"):
                raise SynthError(f"synth.{key}: expected a list or comma-separated names, got {kw[key]!r}")
            kw[key] = [str(q) for q in kw[key]]  # also an omegaconf ListConfig
    kw["out"] = str(kw["out"])
    defaults = SynthConfig(out="")
    for key, value in kw.items():
        want = type(getattr(defaults, key))
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise SynthError(f"synth.{key}: expected {want.__name__}, got {type(value).__name__} {value!r}")
    cfg = SynthConfig(**kw)
    cfg.validate()
    return cfg


# ------------------------------------------------------------------------------------------
# the dataset


def _rng(seed: int, split: str, index: int, attempt: int = 0, stream: int = 0) -> np.random.Generator:
    # one independent stream per clip: the same clip whatever the order or number of workers
    return np.random.default_rng([seed, SPLITS.index(split), index, attempt, stream])


def encode_in_fresh_processes(jobs: list[tuple[dict[str, Any], str, int, str]], workers: int,
                              done: Callable[[], Any] = lambda: None) -> None:
    """Encode ``(scene dict, path, crf, pix_fmt)`` jobs in ``workers`` new Python interpreters.

    Always new interpreters, never this process or forks of it: after a process had trained models
    (a test session, a sweep generating its data), the same pixels sometimes encoded to other bytes
    there, forks included, while every fresh interpreter agreed (docs/benchmarks.md, Data). A plain
    subprocess (not multiprocessing's spawn) also works from scripts without a ``__main__`` guard.
    ``done`` is called once per encoded clip.

    Raises:
        SynthError: a worker failed (its stderr is included).
    """
    chunks = [c for c in (jobs[i :: max(1, workers)] for i in range(max(1, workers))) if c]
    code = "from dynvlm.data.scenes import encode_jobs_from_stdin; encode_jobs_from_stdin()"
    with tempfile.TemporaryDirectory(prefix="dynvlm-encode-") as tmp:
        procs = []
        for i, chunk in enumerate(chunks):
            # jobs and stderr go through files, not pipes: a worker that prints a line per clip into a
            # full stdout pipe while this process still writes its jobs would wait on each other forever
            # (it did, at 945 clips: 64 KiB of paths)
            jobs_file, err_file = Path(tmp) / f"jobs-{i}.jsonl", Path(tmp) / f"stderr-{i}.txt"
            jobs_file.write_text("".join(json.dumps(job) + "\n" for job in chunk))
            with open(jobs_file) as stdin, open(err_file, "w") as stderr:
                procs.append((subprocess.Popen([sys.executable, "-c", code], stdin=stdin, stdout=subprocess.PIPE,
                                               stderr=stderr, text=True, env=_worker_env()), err_file))
        lock = threading.Lock()

        def drain(proc: subprocess.Popen) -> None:  # every worker's stdout at once: none waits on a full pipe
            assert proc.stdout is not None
            with proc.stdout:
                for _ in proc.stdout:
                    with lock:
                        done()

        readers = [threading.Thread(target=drain, args=(proc,), daemon=True) for proc, _ in procs]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        for proc, err_file in procs:
            if proc.wait() != 0:
                raise SynthError(f"encoding synthetic clips failed:\n{err_file.read_text()[-3000:]}")


def _worker_env() -> dict[str, str]:
    """The encoding workers' environment: the same few variables whatever this process has seen.

    Measured: a worker whose inherited environment had grown by some tens of bytes (Lightning adds
    ``PL_GLOBAL_SEED`` and others during a fit; importing decord prepends its folder to ``PATH``) encoded
    one clip of the same scene to other bytes; the cause inside the encoder stack was not found (the
    environment sits at the top of a new process's stack). A fixed environment makes the bytes independent
    of what ran before. ``PYTHONPATH`` is kept so a source checkout without an install still imports.
    """
    env = {"PATH": os.defpath, "LC_ALL": "C"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


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


def draw_scenes(cfg: SynthConfig) -> dict[str, list[Scene]]:
    """The scenes of every split for ``cfg``, without encoding any video: ``split -> [Scene]``.

    A scene that clashes with one already drawn in any split is redrawn, so no clip leaks
    between splits; the draws depend only on the seed, the split and the index.
    """
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
    return scenes


def generate(cfg: SynthConfig | dict[str, Any], force: bool = False, progress: bool = True) -> Path:
    """Write the dataset to ``cfg.out`` unless a complete one with the same settings is there.

    Args:
        cfg: settings (a dict is validated by :func:`make_config`).
        force: regenerate even over a folder made with other settings.
        progress: show a tqdm bar while encoding.

    Returns:
        The output folder.

    Raises:
        SynthError: bad settings, ``out`` holds a dataset made with other settings (the
            message names the differing keys; nothing is deleted), or ``out`` is a non-empty
            folder the generator did not make.
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
        if old.get("version") != key["version"]:
            # made by an older generator from settings it recorded: stale by definition, and nothing in
            # it is lost by regenerating (the same settings remake it with that version's code)
            log.warning("%s was made by synthetic generator version %s (now %s); regenerating",
                        out, old.get("version"), key["version"])
            force = True
        else:
            raise SynthError(
                f"{out} holds a synthetic dataset made with other settings (differ: {', '.join(diff)}); "
                "choose another 'out' or regenerate with --force"
            )
    marker = out / INCOMPLETE
    ours = manifest_path.exists() or marker.exists()
    if out.exists() and any(out.iterdir()) and not ours:
        # never delete what the generator did not write
        raise SynthError(f"{out} is a non-empty folder that holds no synthetic dataset; choose an empty or new 'out'")
    out.mkdir(parents=True, exist_ok=True)
    marker.touch()
    if manifest_path.exists():
        manifest_path.unlink()
    for split in SPLITS:  # stale clips of a previous, different dataset
        shutil.rmtree(out / "videos" / split, ignore_errors=True)

    # 1. scenes (cheap)
    scenes = draw_scenes(cfg)

    # 2. videos
    jobs = [
        (asdict(sc), str(out / "videos" / split / f"{sc.id}.mp4"), cfg.crf, cfg.pix_fmt)
        for split in SPLITS
        for sc in scenes[split]
    ]
    bar = tqdm(total=len(jobs), desc=f"synth videos -> {out}", unit="video", disable=not progress)
    encode_in_fresh_processes(jobs, cfg.workers, bar.update)
    bar.close()

    # 3. questions and annotation files
    counts: dict[str, int] = {}
    for split in SPLITS:
        balancer = LetterBalancer(np.random.default_rng([cfg.seed, SPLITS.index(split), 1 << 20]), cfg.options)
        llava_lines, mc_lines = [], []
        for i, sc in enumerate(scenes[split]):
            rng = _rng(cfg.seed, split, i, stream=1)
            questions = ask(rng, sc, cfg.qtypes_for(sc.duration), cfg.options)
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
    marker.unlink()
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
        elif f.name in ("qtypes", "long_qtypes"):
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
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"synthetic dataset in {out}: " + ", ".join(f"{k} {v}" for k, v in manifest["counts"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
