"""The hf LLM plugin: tiny Qwen2 + word-level tokenizer saved with save_pretrained and loaded by path."""

import json
import math

import pytest
import torch
from tiny_vlm import LLM, WORDS, save_qwen
from transformers import AutoTokenizer, Qwen2ForCausalLM

import dynvlm
from dynvlm.plugins.llms.hf import DEFAULT_SYSTEM_PROMPT, build_word_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_qwen(tmp_path_factory.mktemp("qwen") / "tiny")


@pytest.fixture(scope="module")
def llm(folder):
    return dynvlm.build_component("llm", {"name": "hf", "path": folder})


def test_llm_is_registered():
    assert "hf" in dynvlm.get_registry().names("llm")


def test_word_tokenizer_round_trips_through_save_pretrained(tmp_path):
    tok = build_word_tokenizer(["top-left", "red"])
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<unk>"]
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<|endoftext|>", "<|im_end|>", "<unk>")
    text = "<|im_start|>user\nred top-left 12s: <image>?<|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == [
        "<|im_start|>", "user", "red", "top", "-", "left", "1", "2", "s", ":", "<image>", "?", "<|im_end|>"]
    assert tok.convert_ids_to_tokens(tok("purple", add_special_tokens=False)["input_ids"]) == ["<unk>"]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert again(text, add_special_tokens=False)["input_ids"] == ids
    assert again.chat_template == tok.chat_template
    msgs = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": "red"},
            {"role": "assistant", "content": "top-left"}]
    assert again.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful visual assistant.<|im_end|>\n"
        "<|im_start|>user\nred<|im_end|>\n<|im_start|>assistant\ntop-left<|im_end|>\n")


def test_path_loaded_llm_keeps_its_word_level_tokenizer(llm):
    # saved beside a Qwen2 model, AutoTokenizer alone would rebuild it as a byte-level BPE Qwen2Tokenizer
    tok = llm.tokenizer
    ids = tok(" ".join(WORDS), add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == WORDS
    assert tok.unk_token_id not in ids


def test_path_loaded_llm_matches_the_hf_model(llm, folder):
    assert llm.width == LLM["hidden_size"]
    assert llm.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert llm.stop_ids == [llm.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    ids = torch.tensor([llm.tokenizer("what colour is the video ? red", add_special_tokens=False)["input_ids"]])
    out = llm(llm.embed(ids), torch.ones_like(ids), labels=ids)
    ref = Qwen2ForCausalLM.from_pretrained(folder, local_files_only=True)(input_ids=ids, labels=ids)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.loss, ref.loss)


def test_a_training_step_lowers_the_loss(folder):
    llm = dynvlm.build_component("llm", {"name": "hf", "path": folder})
    ids = torch.tensor([llm.tokenizer("what colour is the video ? red", add_special_tokens=False)["input_ids"]])
    opt = torch.optim.AdamW(llm.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = llm(llm.embed(ids), torch.ones_like(ids), labels=ids).loss
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]


def test_left_padded_batch_generation_matches_one_by_one(llm):
    tok = llm.tokenizer
    prompts = [tok("what colour", add_special_tokens=False)["input_ids"],
               tok("what colour is the video ?", add_special_tokens=False)["input_ids"]]
    singles = []
    for p in prompts:
        ids = torch.tensor([p])
        singles.append(llm.generate(llm.embed(ids), torch.ones_like(ids), max_new_tokens=4)[0].tolist())
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batch = llm.generate(llm.embed(ids), mask, max_new_tokens=4)
    for row, single in zip(batch.tolist(), singles):
        assert row[: len(single)] == single
    assert all(0 <= t < len(tok) for row in batch.tolist() for t in row)


def test_inline_config_builds_qwen2_with_a_word_tokenizer():
    llm = dynvlm.build_component("llm", {"name": "hf", "config": dict(LLM), "vocabulary": WORDS, "system_prompt": ""})
    assert llm.model.config.vocab_size == len(llm.tokenizer)
    assert math.isclose(llm.model.config.initializer_range, LLM["hidden_size"] ** -0.5)
    assert llm.system_prompt is None
    assert type(llm.model).__name__ == "Qwen2ForCausalLM"


def test_inline_config_can_load_a_shipped_tokenizer(folder):
    llm = dynvlm.build_component("llm", {"name": "hf", "config": dict(LLM), "tokenizer": folder})
    tok = llm.tokenizer
    assert tok.convert_ids_to_tokens(tok(" ".join(WORDS), add_special_tokens=False)["input_ids"]) == WORDS
    assert llm.model.config.vocab_size == len(tok)


def test_remote_code_is_not_run_unless_allowed(folder, tmp_path):
    import shutil

    custom = tmp_path / "custom"
    shutil.copytree(folder, custom)
    cfg = json.loads((custom / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilLM"}
    cfg["model_type"] = "evil"
    (custom / "config.json").write_text(json.dumps(cfg))
    (custom / "modeling_evil.py").write_text("raise RuntimeError('remote code ran')\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        dynvlm.build_component("llm", {"name": "hf", "path": str(custom)})


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ({}, ValueError, "exactly one of 'path'"),
        ({"path": "/nonexistent/qwen"}, FileNotFoundError, "does not exist"),
        ({"path": "/"}, FileNotFoundError, "no tokenizer in '/'"),
        ({"config": LLM, "vocabulary": WORDS, "dtype": "int8"}, ValueError, "dtype must be one of"),
        ({"config": dict(LLM, vocab_size=3), "vocabulary": WORDS}, ValueError, "smaller than the tokenizer"),
        ({"config": LLM, "vocabulary": WORDS, "tokenizer": "/x"}, ValueError, "not both"),
    ],
)
def test_bad_llm_specs_say_what_is_wrong(spec, error, message):
    with pytest.raises(error, match=message):
        dynvlm.build_component("llm", {"name": "hf", **spec})


def test_gradient_checkpointing_gives_the_same_gradients(folder):
    grads = []
    for on in (False, True):
        llm = dynvlm.build_component("llm", {"name": "hf", "path": folder, "gradient_checkpointing": on}).train()
        ids = torch.tensor([llm.tokenizer("what colour is the video ? red", add_special_tokens=False)["input_ids"]])
        llm(llm.embed(ids), torch.ones_like(ids), labels=ids).loss.backward()
        grads.append([p.grad for p in llm.parameters()])
    assert any(getattr(mod, "gradient_checkpointing", False) for mod in llm.model.modules())
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_continuation_logprobs_match_full_sequences(llm):
    tok = llm.tokenizer
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [enc("what colour is the video ?"), enc("what colour")]
    conts = [[enc("red"), enc("the video is red"), enc("blue blue")], [enc("green")]]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    got = llm.continuation_logprobs(llm.embed(ids), mask, conts)
    for prompt, per, scores in zip(prompts, conts, got):
        assert len(scores) == len(per)
        for c, score in zip(per, scores):
            full = torch.tensor([prompt + c])
            logp = torch.log_softmax(llm(llm.embed(full), torch.ones_like(full)).logits[0].float(), -1)
            expected = sum(logp[len(prompt) + j - 1, t].item() for j, t in enumerate(c))
            assert score == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_word_level_decoding_writes_numbers_and_punctuation_back(llm):
    from dynvlm.plugins.llms.hf import join_words, word_split

    for text in ["12", "top-left", "option's", "the video is red.", "what colour? 305", "(red) blue/green"]:
        assert join_words(word_split(text)) == text
    tok = llm.tokenizer
    rows = [tok("1 2", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id],
            tok("the video is red .", add_special_tokens=False)["input_ids"]]
    assert llm.decode(rows) == ["12", "the video is red."]
