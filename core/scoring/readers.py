"""How each benchmark's lmms-eval 0.7.3 task reads a letter out of a model's output, re-stated.

These are dynvlm's own implementations of the rules the lmms-eval task functions apply (read in
their source, tested against them in ``tests/test_benchmark_parity.py``, which runs lmms-eval's
functions in ``.venv-lmms``). They deliberately keep lmms-eval's quirks — a letter inside a word
as a last resort, a random option when EgoSchema reads none — because the point is to give the
same letter from the same output; :func:`dynvlm.scoring.answers.extract_choice` is the stricter
reading. :mod:`dynvlm.scoring.benchmarks` applies them per benchmark.

Every function takes the text the task's ``process_results`` would see: the model's answer after
lmms-eval's reasoning-tag stripping (:func:`drop_reasoning`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

#: lmms-eval's default ``--reasoning_tags``: blocks removed before any task reads the answer
REASONING_TAGS: tuple[tuple[str, str], ...] = (("<think>", "</think>"), ("<analysis>", "</analysis>"))

# extract_mcq_answer (VideoMME, MLVU): phrases after which the first later letter counts
ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
    "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)
# how sure a form is that it names the answer (higher wins; then the later position)
_RANK = {"start": 10, "end": 9, "phrase": 7, "paren": 6, "period": 5, "colon": 4, "rparen": 3, "space": 2, "any": 0}
_MARKED = (("paren", "({})"), ("period", "{}."), ("colon", "{}:"), ("rparen", "{})"), ("space", "{} "))


def drop_reasoning(text: str, tags: Sequence[tuple[str, str]] = REASONING_TAGS) -> str:
    """``text`` without its ``<think>…</think>`` (and ``<analysis>``) blocks, stripped.

    A closing tag with no opening one (a template that pre-fills the opening tag) keeps only
    what follows the last closing tag; an unclosed opening tag is left as it is.
    """
    out = text or ""
    for start, end in tags:
        while start in out and end in out:
            i = out.find(start)
            j = out.find(end, i)
            if j < 0:
                break
            out = out[:i] + out[j + len(end):]
        if end in out and start not in out:
            out = out.rsplit(end, 1)[-1]
    return out.strip()


def _trim(text: str, chars: str) -> str:
    """Strip each of ``chars`` from both ends, one character kind after the other (in that order)."""
    for ch in chars:
        text = text.strip(ch)
    return text


def mcq_letter(text: str, choices: str = "ABCD") -> str:
    """The letter VideoMME's and MLVU's scoring reads (``""`` when none).

    Candidates, best first: the answer starts with a standalone letter; ends with one; a letter
    after an answer phrase ("the answer is", "答案是", ...: the first such letter anywhere after
    it, even inside a word); ``(X)``; ``X.``; ``X:``; ``X)``; ``X`` before a space; and only when
    nothing else matched, any occurrence of a letter. Within a form, the later one wins.
    """
    if not text or not text.strip():
        return ""
    body = _trim(text.strip(), ",.!?;:'\"")
    padded = f" {body} "
    found: list[tuple[int, int, int, str]] = []  # (rank, position, -order, letter): max() picks

    def add(form: str, letter: str, position: int) -> None:
        found.append((_RANK[form], position, -len(found), letter))

    for form, pattern in _MARKED:
        for ch in choices:
            at = padded.rfind(pattern.format(ch))
            if at >= 0:
                add(form, ch, at)
    lowered = padded.lower()
    for phrase in ANSWER_PHRASES:
        at = lowered.find(phrase)
        if at >= 0:
            for ch in choices:
                pos = padded.find(ch, at + len(phrase))
                if pos >= 0:
                    add("phrase", ch, pos)
    bare = padded.strip()
    for ch in choices:
        if bare.startswith(ch) and (len(bare) == 1 or not bare[1].isalpha()):
            add("start", ch, 0)
        if bare.endswith(ch) and (len(bare) == 1 or not bare[-2].isalpha()):
            add("end", ch, len(padded) - 1)
    if not found:
        for ch in choices:
            if ch in padded:
                add("any", ch, padded.rfind(ch))
    return max(found)[3] if found else ""


def egoschema_letter(text: str, options: Sequence[str], seed: str) -> tuple[str, bool]:
    """EgoSchema's reading: ``(letter, guessed)``.

    Marked letters (``(X)``, ``X`` before a space, ``X.``) are looked for; when there are none and
    the answer has more than five words, the option strings (as the record writes them,
    ``"A. ..."``) found in it; several: the one whose last occurrence comes first. Nothing found:
    a random letter (lmms-eval draws from the global RNG; dynvlm and the local task seed it with
    ``seed``, so both draw the same letter), and ``guessed`` is True.

    Args:
        text: the answer.
        options: the five option strings of the record (``doc["option"]``), stripped.
        seed: the question's seed (:func:`dynvlm.data.benchmarks.egoschema.seed_of`).
    """
    letters = "ABCDE"
    padded = f" {_trim(text or '', ',.!?;:' + chr(39))} "
    marks = [m for fmt in ("({})", "{} ", "{}.") for m in (fmt.format(c) for c in letters) if m in padded]
    by_text = False
    if not marks and len(padded.split()) > 5:
        lowered = padded.lower()
        marks = [c for c, opt in zip(letters, options) if opt.lower() in lowered]
        by_text = True
    if not marks:
        return random.Random(seed).choice(list(letters)), True
    if by_text:
        where = [padded.lower().rfind(options[letters.index(c)].lower()) for c in marks]
    else:
        where = [padded.rfind(m) for m in marks]
    best = marks[where.index(min(where))]
    return best.replace("(", "").replace(")", "").replace(".", "").strip(), False


def word_letter(text: str, choices: str = "ABCD") -> str:
    """PerceptionTest's reading: the first of ``choices`` standing as a word of its own (``""`` when none).

    A letter next to any word character (letters of every script, digits, ``_``) is not a word
    of its own: ``"答案是B"`` reads nothing.
    """
    found = re.search(rf"(?<!\w)([{choices}])(?!\w)", (text or "").strip())
    return found.group(1) if found else ""


def tempcompass_letter(text: str, answer: str) -> tuple[str, bool]:
    """TempCompass multi-choice's rule matching: ``(letter, matched)``.

    The answer matches when it is the whole answer option (``"B. left"``), a bare letter A-D,
    or starts with ``"X."`` or ``"X)"``. Anything else goes to lmms-eval's ChatGPT judge, which
    scores 0 without an API key; dynvlm has no judge and scores it 0 too (``matched`` False).
    """
    if text == answer:
        return answer[:1], True
    if text in ("A", "B", "C", "D"):
        return text, True
    if text[:2] in ("A.", "B.", "C.", "D.", "A)", "B)", "C)", "D)"):
        return text[0], True
    return "", False


def muirbench_filtered(text: str) -> str:
    """MuirBench's ``flexible-extract`` filter: the letter of an answer starting ``"X."`` (after
    white space), else the whole answer."""
    found = re.match(r"\s*([A-Z])\.", text or "")
    return found.group(1) if found else (text or "")
