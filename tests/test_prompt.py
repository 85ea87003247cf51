"""Prompt builder, token by token: timestamps, visual placeholders, label mask, padding."""

import pytest

from dynvlm.model.prompt import IGNORE_INDEX, IMAGE_TOKEN_ID, PromptBuilder, format_seconds, video_text
from dynvlm.plugins.llms.hf import DEFAULT_SYSTEM_PROMPT, build_word_tokenizer
from dynvlm.records import Turn

TOK = build_word_tokenizer(["what", "colour", "is", "it", "red", "and", "now", "blue", "describe"])
SYSTEM = ["<|im_start|>", "system", "You", "are", "a", "helpful", "visual", "assistant", ".", "<|im_end|>"]
IMG = "IMG"  # stands for IMAGE_TOKEN_ID in expected sequences


def tokens(ids):
    return [IMG if i == IMAGE_TOKEN_ID else TOK.convert_ids_to_tokens(i) for i in ids]


@pytest.fixture
def builder():
    return PromptBuilder(TOK, DEFAULT_SYSTEM_PROMPT)


def test_timestamps_are_written_from_real_times():
    assert [format_seconds(t) for t in (0.0, 1.0, 2.5, 3.04, 10.96)] == ["0s", "1s", "2.5s", "3s", "11s"]
    assert video_text([1.0, 2.0]) == "1s: <image>; 2s: <image>"


def test_video_prompt_token_by_token(builder):
    conv = [Turn("human", "<video>\nwhat colour is it ?"), Turn("gpt", "red")]
    enc = builder.encode(conv, [1.0, 2.5], tokens_per_frame=2)
    expected = [
        *SYSTEM,
        "<|im_start|>", "user",
        "1", "s", ":", IMG, IMG, ";", "2", ".", "5", "s", ":", IMG, IMG,
        "what", "colour", "is", "it", "?", "<|im_end|>",
        "<|im_start|>", "assistant", "red", "<|im_end|>",
    ]  # fmt: skip
    assert tokens(enc.ids) == expected
    answer = len(expected) - 2
    assert enc.labels[:answer] == [IGNORE_INDEX] * answer
    assert enc.labels[answer:] == TOK.convert_tokens_to_ids(["red", "<|im_end|>"])
    assert enc.answer_spans == [(answer, len(expected))]
    assert enc.visual_tokens == 4


def test_image_uses_one_placeholder_expanded_to_m_positions(builder):
    conv = [Turn("human", "<image>\ndescribe it"), Turn("gpt", "red")]
    enc = builder.encode(conv, [0.0], tokens_per_frame=3, kind="image")
    toks = tokens(enc.ids)
    user = toks.index("user")
    assert toks[user + 1 : user + 6] == [IMG, IMG, IMG, "describe", "it"]
    assert "s" not in toks  # no timestamp for an image


def test_every_answer_of_a_multi_turn_conversation_is_labelled(builder):
    conv = [Turn("human", "<video> what colour ?"), Turn("gpt", "red"),
            Turn("human", "and now ?"), Turn("gpt", "blue")]
    enc = builder.encode(conv, [0.0], tokens_per_frame=1)
    labelled = [TOK.convert_ids_to_tokens(t) for t in enc.labels if t != IGNORE_INDEX]
    assert labelled == ["red", "<|im_end|>", "blue", "<|im_end|>"]
    assert [tokens(enc.ids)[s:e] for s, e in enc.answer_spans] == [["red", "<|im_end|>"], ["blue", "<|im_end|>"]]


def test_generation_prompt_ends_with_the_assistant_header(builder):
    enc = builder.encode([Turn("human", "<video> what colour ?")], [0.0, 1.0], 1, generation_prompt=True)
    assert tokens(enc.ids)[-2:] == ["<|im_start|>", "assistant"]
    assert set(enc.labels) == {IGNORE_INDEX}


def test_no_system_turn_when_system_prompt_is_none():
    enc = PromptBuilder(TOK, None).encode([Turn("human", "<video> what"), Turn("gpt", "red")], [0.0], 1)
    assert tokens(enc.ids)[:3] == ["<|im_start|>", "user", "0"]


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_to_the_longest(builder, side):
    short = builder.encode([Turn("human", "<video> what"), Turn("gpt", "red")], [0.0], 1)
    long = builder.encode([Turn("human", "<video> what colour is it ?"), Turn("gpt", "blue")], [0.0, 1.0], 2)
    batch = builder.collate([short, long], padding_side=side)
    n_short, n_long = len(short.ids), len(long.ids)
    assert batch.input_ids.shape == (2, n_long)
    pad = n_long - n_short
    assert batch.attention_mask[1].tolist() == [1] * n_long
    real = slice(0, n_short) if side == "right" else slice(pad, n_long)
    padding = slice(n_short, n_long) if side == "right" else slice(0, pad)
    assert batch.attention_mask[0, real].tolist() == [1] * n_short
    assert batch.attention_mask[0, padding].tolist() == [0] * pad
    assert batch.input_ids[0, padding].tolist() == [TOK.pad_token_id] * pad
    assert batch.labels[0, padding].tolist() == [IGNORE_INDEX] * pad
    assert batch.labels[0, real].tolist() == short.labels
    # visual positions are flagged and hold the pad id, never the negative sentinel
    assert batch.visual_mask.sum().item() == 1 + 4
    assert batch.visual_mask[0, real].tolist() == [i == IMAGE_TOKEN_ID for i in short.ids]
    assert (batch.input_ids >= 0).all()
    start, end = batch.answer_spans[0][0]
    assert batch.labels[0, start:end].tolist() == TOK.convert_tokens_to_ids(["red", "<|im_end|>"])


@pytest.mark.parametrize(
    ("conv", "frames", "kind", "message"),
    [
        ([Turn("human", "what colour ?"), Turn("gpt", "red")], 1, "video", "exactly one <video> or <image>"),
        ([Turn("human", "<video> <video>"), Turn("gpt", "red")], 1, "video", "found 2"),
        ([Turn("human", "<video> what"), Turn("gpt", "red"), Turn("human", "<image> now"), Turn("gpt", "red")],
         1, "video", "turn 2 holds"),
        ([Turn("human", "<image> what"), Turn("gpt", "red")], 3, "video", "stands for one frame"),
        ([Turn("human", "<video> what")], 1, "video", "must end with a gpt turn"),
        ([Turn("gpt", "red")], 1, "video", "must start with a human turn"),
        ([Turn("human", "<video>"), Turn("robot", "red")], 1, "video", "role 'robot'"),
        ([Turn("human", "<video>"), Turn("human", "red")], 1, "video", "must alternate"),
    ],
)
def test_malformed_conversations_are_rejected(builder, conv, frames, kind, message):
    with pytest.raises(ValueError, match=message):
        builder.encode(conv, [float(t) for t in range(frames)], 1, kind=kind)


def test_too_long_sequence_is_rejected():
    with pytest.raises(ValueError, match="exceeds max_length=10"):
        PromptBuilder(TOK, None, max_length=10).encode([Turn("human", "<video>"), Turn("gpt", "red")], [0.0], 16)


def test_cached_text_is_reused_for_any_tokens_per_frame(builder):
    conv = [Turn("human", "<video> what colour ?"), Turn("gpt", "red")]
    two = builder.encode(conv, [0.0, 1.0], 2)
    three = builder.encode(conv, [0.0, 1.0], 3)
    assert len(builder._cache) == 1  # rendered and tokenised once
    assert (two.visual_tokens, three.visual_tokens) == (4, 6)
    assert [i for i in two.ids if i != IMAGE_TOKEN_ID] == [i for i in three.ids if i != IMAGE_TOKEN_ID]
    assert len(three.ids) == len(two.ids) + 2 and three.answer_spans[0][0] == two.answer_spans[0][0] + 2
    assert builder.encode(conv, [0.0, 2.0], 2).ids != two.ids  # other timestamps: other text
