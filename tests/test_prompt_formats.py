"""Contract every registered prompt format keeps (third-party ones too), and the first-party formats token by token.

A format writes one ``<image>`` per kept frame wherever it puts them, renders a conversation as a
growing prefix (so answers can be located), and the prompt builder with it labels only the
answers and holds ``frames x M`` visual positions (one more after a video with the separator).
"""

from __future__ import annotations

import pytest

import dynvlm
from dynvlm.interfaces import IMAGE
from dynvlm.model.prompt import IGNORE_INDEX, IMAGE_TOKEN_ID, PromptBuilder
from dynvlm.plugins.llms.hf import DEFAULT_SYSTEM_PROMPT, build_word_tokenizer
from dynvlm.records import Turn

FORMATS = dynvlm.get_registry().names("prompt")
TOK = build_word_tokenizer(["what", "colour", "is", "it", "red", "and", "now", "blue", "describe"])
CONV = [Turn("human", "<video>\nwhat colour is it ?"), Turn("gpt", "red"), Turn("human", "and now ?"), Turn("gpt", "blue")]
IMG = "IMG"


def build(name):
    return dynvlm.build_component("prompt", {"name": name})


def tokens(ids):
    return [IMG if i == IMAGE_TOKEN_ID else TOK.convert_ids_to_tokens(i) for i in ids]


def test_first_party_formats_are_registered():
    assert {"dynvlm", "llava_ov"} <= set(FORMATS)


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_writes_one_image_per_kept_frame(name):
    fmt = build(name)
    assert isinstance(fmt, dynvlm.PromptFormat)
    for frames in (1, 3, 8):
        text = fmt.expand("<video>\nwhat colour is it ?", "video", [0.5 * t for t in range(frames)])
        assert text.count(IMAGE) == frames and "<video>" not in text
    assert fmt.expand("<image>\ndescribe it", "image", [0.0]).count(IMAGE) == 1
    with pytest.raises(ValueError, match="at least one kept frame"):
        fmt.expand("<video>", "video", [])


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_renders_a_growing_prefix(name):
    fmt = build(name)
    msgs = [{"role": "user", "content": "what colour is it ?"}, {"role": "assistant", "content": "red"},
            {"role": "user", "content": "and now ?"}, {"role": "assistant", "content": "blue"}]
    for sys in (None, "you are a helpful assistant ."):
        system = fmt.system(sys)
        head = [{"role": "system", "content": system}] if system else []
        for j in (1, 3):
            prefix = fmt.render(head + msgs[:j], TOK, True)
            full = fmt.render(head + msgs[: j + 1], TOK, False)
            assert full.startswith(prefix) and full[len(prefix):].startswith(msgs[j]["content"])


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("separator", [False, True])
def test_every_format_labels_only_the_answers_and_holds_the_visual_positions(name, separator):
    builder = PromptBuilder(TOK, DEFAULT_SYSTEM_PROMPT, format=build(name), separator=separator)
    enc = builder.encode(CONV, [0.0, 1.0, 2.0], tokens_per_frame=4)
    assert enc.visual_tokens == 12 + separator == enc.ids.count(IMAGE_TOKEN_ID)
    labelled = [TOK.convert_ids_to_tokens(t) for t in enc.labels if t != IGNORE_INDEX]
    assert labelled == ["red", "<|im_end|>", "blue", "<|im_end|>"]
    visual = [i for i, t in enumerate(enc.ids) if t == IMAGE_TOKEN_ID]
    assert all(enc.labels[i] == IGNORE_INDEX for i in visual)
    # the generation prompt is the training sequence up to the first answer
    gen = builder.encode(CONV[:1], [0.0, 1.0, 2.0], tokens_per_frame=4, generation_prompt=True)
    assert enc.ids[: len(gen.ids)] == gen.ids and enc.answer_spans[0][0] == len(gen.ids)
    # an image sample gets no separator
    img = builder.encode([Turn("human", "<image>\ndescribe it"), Turn("gpt", "red")], [0.0], 4, kind="image")
    assert img.visual_tokens == 4 == img.ids.count(IMAGE_TOKEN_ID)


def test_llava_ov_writes_the_hf_processor_template_token_by_token():
    builder = PromptBuilder(TOK, DEFAULT_SYSTEM_PROMPT, format=build("llava_ov"), separator=True)
    enc = builder.encode(CONV[:2], [0.5, 1.5], tokens_per_frame=2)
    assert tokens(enc.ids) == [
        "<|im_start|>", "user", IMG, IMG, IMG, IMG, IMG, "what", "colour", "is", "it", "?", "<|im_end|>",
        "<|im_start|>", "assistant", "red", "<|im_end|>",
    ]  # fmt: skip  -- no system turn (the LLM's default is not LLaVA-OV's), no timestamps, newline last
    fmt = build("llava_ov")
    msgs = [{"role": "user", "content": fmt.expand("<video>\nwhat ?", "video", [0.0, 1.0])}]
    assert fmt.render(msgs, TOK, True) == "<|im_start|>user\n<image><image>\nwhat ?<|im_end|>\n<|im_start|>assistant\n"
    with_system = dynvlm.build_component("prompt", {"name": "llava_ov", "system_prompt": "be brief ."})
    assert with_system.system(DEFAULT_SYSTEM_PROMPT) == "be brief ."


def test_the_dynvlm_format_is_the_default():
    conv = CONV[:2]
    default = PromptBuilder(TOK, DEFAULT_SYSTEM_PROMPT).encode(conv, [1.0, 2.5], 2)
    named = PromptBuilder(TOK, DEFAULT_SYSTEM_PROMPT, format=build("dynvlm")).encode(conv, [1.0, 2.5], 2)
    assert default == named
    assert tokens(default.ids)[:3] == ["<|im_start|>", "system", "You"]  # the LLM's system prompt
    assert "s" in tokens(default.ids)  # timestamps


def test_an_unknown_format_names_the_installed_ones(tmp_path):
    from dynvlm.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("model: {prompt: {name: nosuch}}\n")
    with pytest.raises(ConfigError, match=r"model\.prompt\.name.*nosuch.*dynvlm, llava_ov"):
        load_config(path)


def test_the_worked_example_of_docs_plugins_md_is_a_format():
    """docs/plugins.md's prompt-format example, registered in-process, keeps the contract."""
    import re
    import types
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL) if "register_prompt_formats" in b)
    module = types.ModuleType("frame_numbers_doc")
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    reg = dynvlm.Registry()
    reg.add_plugin(module, name="frame_numbers_doc")
    assert not reg.failures and reg.names("prompt") == ["frame_numbers"]
    fmt = reg.get("prompt", "frame_numbers").cls()
    assert fmt.expand("<video>\nwhat ?", "video", [0.0, 2.0]) == "frame 1: <image> frame 2: <image>\nwhat ?"
    enc = PromptBuilder(TOK, None, format=fmt).encode(CONV[:2], [0.0, 2.0], tokens_per_frame=3)
    assert enc.visual_tokens == 6 == enc.ids.count(IMAGE_TOKEN_ID)
