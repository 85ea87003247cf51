"""Turning a model's free-text answer to a multiple-choice question into an option index.

The rules follow what the common video-QA harnesses do, in this order:

1. drop a lead-in such as "The best answer is", "Answer:", "Best option:" and markdown;
   then, when the option texts are given, an answer that is exactly one option's text
   (case and punctuation ignored) is that option;
2. a leading letter: ``"B"``, ``"B."``, ``"(B)"``, ``"B) ..."``, ``"B: ..."``;
3. ``"answer is X"`` / ``"answer: X"`` anywhere;
4. ``"(X)"`` anywhere;
5. ``"X."`` starting a word anywhere.

Anything else is unparseable and returns ``None``: it is scored wrong, never guessed.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

LEAD_INS = (
    "the best answer is",
    "the correct answer is",
    "the best option is",
    "the correct option is",
    "the answer is",
    "best answer:",
    "best option:",
    "correct answer:",
    "answer:",
    "option:",
)


def letters(n_options: int) -> str:
    """The option letters ``"ABCD..."`` for ``n_options`` options."""
    if not 1 <= n_options <= 26:
        raise ValueError(f"a multiple-choice question needs 1 to 26 options, got {n_options}")
    return string.ascii_uppercase[:n_options]


def extract_choice(text: str, n_options: int, options: Sequence[str] | None = None) -> int | None:
    """Index of the option ``text`` picks among ``n_options`` (``None`` when none can be read).

    Args:
        text: the model's answer.
        n_options: how many options the question has (letters ``A``.. beyond it are ignored).
        options: the option texts, to accept an answer that repeats one verbatim.
    """
    valid = letters(n_options)
    s = _strip_markup(text)
    if not s:
        return None
    lowered = s.lower()
    for lead in LEAD_INS:
        if lowered.startswith(lead):
            s = s[len(lead) :].strip(" \t\n:")
            lowered = s.lower()
            break
    if options:
        # an answer that repeats one option's text is that option, even when the text begins
        # with a word that looks like a letter ("A blue square" is not option A)
        key = _normalise(s)
        matches = [i for i, opt in enumerate(options[:n_options]) if _normalise(opt) == key]
        if len(matches) == 1:
            return matches[0]
    cls = f"[{valid}]"
    patterns = (
        rf"^\(?({cls})\)?(?=$|[\s.,:;)\]])",
        rf"(?i:answer\s*(?:is|:))\s*\(?({cls})\)?(?=$|[\s.,:;)\]])",
        rf"\(({cls})\)",
        rf"(?:^|\s)({cls})\.(?=$|\s)",
    )
    for pattern in patterns:
        found = re.search(pattern, s)
        if found:
            return valid.index(found.group(1))
    return None


def _strip_markup(text: str) -> str:
    s = (text or "").strip()
    s = re.sub(r"[*_`]+", "", s)
    return s.strip().strip("\"'").strip()


def _normalise(text: str) -> str:
    """Lower case, punctuation dropped, white space folded: the open-ended exact-match key."""
    table = str.maketrans("", "", string.punctuation)
    return " ".join(text.lower().translate(table).split())


def exact_match(prediction: str, answer: str) -> bool:
    """Normalised exact match for open-ended answers (case, punctuation, spacing ignored)."""
    return _normalise(prediction) == _normalise(answer)
