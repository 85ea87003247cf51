"""Answer-letter extraction on a table of model outputs, including ones with no letter."""

import pytest

from dynvlm.scoring.answers import exact_match, extract_choice, letters

OPTIONS = ["red circle", "blue square", "green triangle", "yellow star"]

CASES = [
    ("B", 1),
    ("B.", 1),
    ("(C)", 2),
    ("c", None),  # a lone lower-case letter is not read as an option
    ("D) yellow star", 3),
    ("A: red circle", 0),
    ("The best answer is C.", 2),
    ("The answer is (B)", 1),
    ("Answer: D", 3),
    ("**B**", 1),
    ("Best option: (A)", 0),
    ("I think the answer is B because the square is blue.", 1),
    ("Looking at second 3, (C) fits.", 2),
    ("Option B. is right", 1),
    ("blue square", 1),
    ("Blue Square!", 1),
    ("E", None),  # beyond the four options
    ("", None),
    ("   ", None),
    ("I cannot tell from the video.", None),
    ("purple hexagon", None),
    ("The video shows several shapes moving around.", None),
    ("answer is e", None),
    ("The answer is a lot like the second.", None),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_extract_choice_table(text, expected):
    assert extract_choice(text, 4, OPTIONS) == expected


def test_option_text_wins_over_a_leading_article():
    options = ["a red circle", "a blue square", "the green one", "a dog"]
    assert extract_choice("A blue square", 4, options) == 1
    assert extract_choice("A dog.", 4, options) == 3
    assert extract_choice("A. a red circle", 4, options) == 0
    assert extract_choice("A blue square", 4) == 0  # without option texts the leading letter rule applies


def test_option_text_must_be_unique_to_count():
    assert extract_choice("same", 2, ["same", "same"]) is None


def test_letters_bounds():
    assert letters(5) == "ABCDE"
    with pytest.raises(ValueError, match="1 to 26 options"):
        letters(0)


def test_exact_match_normalises():
    assert exact_match("  The Red, circle. ", "the red circle")
    assert not exact_match("red", "the red circle")
