"""VideoLLM without a Trainer: the splice, losses, multiple-choice scoring, generation, optimizer groups."""

import dataclasses

import pytest
import torch
from tiny_vlm import colour_samples, inline_model, run_config, save_clip, save_qwen

from dynvlm.model.prompt import IGNORE_INDEX
from dynvlm.model.video_llm import VideoLLM
from dynvlm.records import Batch, Turn
from dynvlm.scoring.records import mc_records, open_records


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return colour_samples(tmp_path_factory.mktemp("videos"), 4)  # T = 4 or 5 frames of 24 px


@pytest.fixture(scope="module")
def path_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    model = inline_model()
    model["encoder"] = {"name": "clip", "path": save_clip(root / "clip")}
    model["llm"] = {"name": "hf", "path": save_qwen(root / "qwen")}
    torch.manual_seed(0)
    return VideoLLM(run_config(root, model))


def test_forward_and_training_step_on_decoded_frames(path_model, samples):
    m = path_model
    params = {n: p for n, p in m.named_parameters()}
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.AdamW(m.param_groups(), lr=1e-2)
    out = m(Batch(samples), training=True)
    assert torch.isfinite(out["loss"])
    assert out["visual_tokens"] <= 64  # budget.max_tokens
    out["loss"].backward()
    # video_sft trains every module: the gradient reaches the encoder through the compressor and projector
    for prefix in ("encoder.", "projector.", "llm."):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in params.items() if n.startswith(prefix))
    opt.step()
    assert not torch.equal(before["projector.net.0.weight"], params["projector.net.0.weight"])


def test_visual_tokens_land_in_the_visual_positions(path_model, samples):
    m = path_model
    plans = m.plan(samples)
    assert [p.tokens for p in plans] == [16, 12, 16, 12]  # 64 // 4 = 16; 64 // 5 = 12, pooled to 3x4 exactly
    visual, aux, _ = m.visual_features(samples, plans)
    assert aux is None
    assert [v.shape for v in visual] == [(len(p.indices) * p.tokens, 32) for p in plans]
    with torch.no_grad():  # batched (grouped by M) == each sample on its own
        for s, p, v in zip(samples, plans, visual):
            feats = m.encoder(m.encoder.preprocess(s.frames[list(p.indices)]))
            alone = m.projector(m.compressor(feats, m.encoder.grid, p.tokens).x).reshape(-1, 32)
            torch.testing.assert_close(v, alone, atol=1e-5, rtol=1e-4)
    prompt = m.prompts.collate(m.encode_prompts(samples, plans))
    embeds = m.splice(prompt, visual)
    text = m.llm.embed(prompt.input_ids)
    for b in range(len(samples)):
        torch.testing.assert_close(embeds[b][prompt.visual_mask[b]], visual[b])
        torch.testing.assert_close(embeds[b][~prompt.visual_mask[b]], text[b][~prompt.visual_mask[b]])


def test_evaluation_encodes_long_inputs_in_chunks(path_model, samples, monkeypatch):
    import dynvlm.model.video_llm

    plans = path_model.plan(samples)
    with torch.no_grad():
        whole, _, _ = path_model.visual_features(samples, plans)
        monkeypatch.setattr(dynvlm.model.video_llm, "ENCODER_CHUNK", 3)
        chunked, _, _ = path_model.visual_features(samples, plans)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_mismatched_visual_count_is_an_error(path_model, samples):
    m = path_model
    plans = m.plan(samples[:1])
    visual, _, _ = m.visual_features(samples[:1], plans)
    prompt = m.prompts.collate(m.encode_prompts(samples[:1], plans))
    with pytest.raises(RuntimeError, match="visual positions"):
        m.splice(prompt, [visual[0][:-1]])


def test_option_scores_are_answer_log_likelihoods(path_model, samples, monkeypatch):
    import dynvlm.model.video_llm

    m = path_model.eval()
    scores = m.score_options(samples[:2]).scores
    assert [len(s) for s in scores] == [3, 3]
    full = m.score_options(samples[:2], shared_prompt=False).scores  # every (sample, option) sequence in full
    monkeypatch.setattr(dynvlm.model.video_llm, "SCORE_SEQUENCES", 2)  # 6 sequences in 3 LLM calls
    chunked = m.score_options(samples[:2], shared_prompt=False).scores
    shared_chunked = m.score_options(samples[:2]).scores
    for other in (full, chunked, shared_chunked):
        assert [o == pytest.approx(s, rel=1e-4) for o, s in zip(other, scores)] == [True, True]
    # the shared prompt really runs once per sample: count the positions the LLM processes
    seen = []
    hook = m.llm.model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["inputs_embeds"].shape[0] * kw["inputs_embeds"].shape[1]), with_kwargs=True)
    m.score_options(samples[:2])
    shared_positions = sum(seen)
    seen.clear()
    m.score_options(samples[:2], shared_prompt=False)
    hook.remove()
    assert shared_positions < sum(seen) / 2
    # score of option B of sample 0 == -(summed LM loss of the conversation answered "B")
    s = samples[0]
    conv = [*s.conversation[:-1], Turn("gpt", "B")]
    plans = m.plan([s])
    prompt = m.prompts.collate(m.encode_prompts([s], plans, [conv]))
    visual, _, _ = m.visual_features([s], plans)
    out = m.llm(m.splice(prompt, visual), prompt.attention_mask, prompt.labels)
    n = (prompt.labels != IGNORE_INDEX).sum()
    assert scores[0][1] == pytest.approx(-(out.loss * n).item(), rel=1e-4)
    m.train()


def test_cloze_scores_option_texts_after_the_bare_question(path_model, samples):
    m = path_model.eval()
    s = samples[1]
    scores = m.score_options([s], cloze=True).scores[0]
    assert scores == pytest.approx(m.score_options([s], cloze=True, shared_prompt=False).scores[0], rel=1e-4)
    # option k's score == -(summed LM loss of "<video>\n{question}" answered with option k's text)
    plans = m.plan([s])
    visual, _, _ = m.visual_features([s], plans)
    for k, option in enumerate(s.meta["options"]):
        conv = [Turn("human", f"<video>\n{s.meta['question']}"), Turn("gpt", option)]
        prompt = m.prompts.collate(m.encode_prompts([s], plans, [conv]))
        out = m.llm(m.splice(prompt, visual), prompt.attention_mask, prompt.labels)
        n = (prompt.labels != IGNORE_INDEX).sum()
        assert scores[k] == pytest.approx(-(out.loss * n).item(), rel=1e-4)
    bare = dataclasses.replace(s, meta={k: v for k, v in s.meta.items() if k != "question"})
    with pytest.raises(ValueError, match="meta\\['question'\\]"):
        m.score_options([bare], cloze=True)
    m.train()


def test_generate_batch_matches_one_by_one(path_model, samples):
    m = path_model.eval()
    together = m.generate(samples[:2], max_new_tokens=3)
    alone = [m.generate([s], max_new_tokens=3).texts[0] for s in samples[:2]]
    assert together.texts == alone
    # each sample's usage: its plan's tokens, all of them spliced, and the frames it kept
    plans = m.plan(samples[:2])
    assert [(u.planned_tokens, u.actual_tokens) for u in together.usage] == [(p.visual_tokens,) * 2 for p in plans]
    assert [len(u.kept_times) for u in together.usage] == [len(p.indices) for p in plans]
    together = together.texts
    assert all(isinstance(t, str) for t in together)
    m.train()


def test_optimizer_groups_put_the_encoder_at_a_fraction_of_lr(path_model):
    groups = {g["name"]: g for g in path_model.param_groups()}
    assert set(groups) == {"encoder", "encoder/no_decay", "main", "main/no_decay"}
    assert groups["encoder"]["lr"] == pytest.approx(3e-3 * 0.2)
    assert groups["main"]["lr"] == pytest.approx(3e-3)
    enc = {id(p) for p in path_model.encoder.parameters()}
    assert all(id(p) in enc for p in groups["encoder"]["params"] + groups["encoder/no_decay"]["params"])
    assert all(p.dim() == 1 for p in groups["main/no_decay"]["params"])


def test_compressor_aux_loss_is_added(samples, tmp_path):
    cfg = run_config(tmp_path, inline_model("prune", aux_loss="keep_ratio"), optim={"aux_weight": 10.0})
    m = VideoLLM(cfg)
    out = m(samples[:2], training=True)
    assert out["aux_loss"] > 0
    assert out["loss"].item() == pytest.approx((out["lm_loss"] + 10.0 * out["aux_loss"]).item(), rel=1e-5)


def test_missing_component_is_named(tmp_path):
    cfg = run_config(tmp_path)
    del cfg["model"]["llm"]
    with pytest.raises(ValueError, match="model.llm: missing"):
        VideoLLM(cfg)


def test_bad_frames_name_the_sample(path_model, samples):
    bad = samples[0]
    broken = type(bad)(bad.frames, bad.timestamps[:-1], bad.conversation, id="broken")
    with pytest.raises(ValueError, match="sample 'broken'"):
        path_model(Batch([broken]))


def test_model_bench_measures_a_step(tmp_path):
    import yaml

    from dynvlm.measure import model_bench
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(tmp_path)))
    args = model_bench._parser().parse_args(["--config", str(config), "--max-tokens", "32", "--steps", "1"])
    row = model_bench.measure(4, args)
    assert (row["frames"], row["tokens_per_frame"], row["visual_tokens"]) == (4, 8, 32)  # 32 // 4 = 8: pool's 2x4 grid
    assert row["llm_positions"] > row["visual_tokens"]
    assert row["act_llm_mib"] > 0 and row["act_encoder_mib"] > 0 and 0 < row["llm_share"] < 1
    assert "| 4 | 8 | 32 |" in model_bench.table([row])


def test_a_batch_whose_files_were_all_skipped_makes_no_step(path_model):
    assert path_model.training_step(Batch([]), 0) is None
    with pytest.raises(ValueError, match="empty batch"):
        path_model(Batch([]))


def test_generate_mode_scores_parsed_letters(samples, tmp_path):
    m = VideoLLM(run_config(tmp_path, eval={"mode": "generate", "max_new_tokens": 2})).eval()
    records = mc_records(m, samples[:3], m.eval_cfg.mode)
    assert [r["question_id"] for r in records] == ["q0", "q1", "q2"]
    assert all(isinstance(r["text"], str) and -1 <= r["pred"] < 3 for r in records)
    assert [r["answer"] for r in records] == [0, 1, 2]


def test_siglip_video_llm_trains_a_step(samples, tmp_path):
    from tiny_vlm import save_siglip

    model = inline_model()
    model["encoder"] = {"name": "siglip", "path": save_siglip(tmp_path / "siglip")}
    m = VideoLLM(run_config(tmp_path, model))
    opt = torch.optim.AdamW(m.param_groups(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = m(samples[:2])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_the_plan_follows_a_swapped_compressor(tmp_path):
    from dynvlm.config import build_component

    m = VideoLLM(run_config(tmp_path, inline_model("prune"), budget={"max_tokens": 64, "tokens_per_frame": 8}))
    assert m.budget.plan(4).tokens == 8  # prune serves any count
    m.compressor = build_component("compressor", {"name": "pool", "aspect_tolerance": 1.0}, dim=m.encoder.width)
    assert m.budget.plan(4).tokens == 4  # pool restricted to squares: the largest square <= 8


def test_open_ended_answers_are_generated_and_exact_matched(samples, tmp_path):
    m = VideoLLM(run_config(tmp_path, eval={"max_new_tokens": 2})).eval()
    open_ended = [type(s)(s.frames, s.timestamps, [Turn("human", "<video> what colour is the video ?"),
                                                   Turn("gpt", "red")], id=f"o{i}", meta={"category": "colour"})
                  for i, s in enumerate(samples[:2])]
    records = open_records(m, open_ended + samples[:1])  # the MC sample is left to mc_records
    assert [r["question_id"] for r in records] == ["o0", "o1"]
    generated = m.generate(open_ended, max_new_tokens=2).texts
    assert [r["text"] for r in records] == generated
    assert [r["correct"] for r in records] == [g == "red" for g in generated]


@pytest.mark.parametrize("compressor, place", [("prune", "before_projector"), ("pool", "after_projector")])
def test_a_bf16_encoder_and_llm_run_with_the_fp32_projector_outside_autocast(samples, tmp_path, compressor, place):
    """The 7B and LLaVA-OV recipes load the encoder and LLM in bf16; the projector (and prune's scorer) are fp32.
    Outside autocast (32-true, dynvlm cost, the lmms bridge) the features used to meet the fp32 weights:
    'mat1 and mat2 must have the same dtype'. Each part now computes in its own dtype."""
    model = inline_model(compressor)
    model["encoder"]["dtype"] = model["llm"]["dtype"] = "bfloat16"
    model["compressor_at"] = place
    m = VideoLLM(run_config(tmp_path, model))
    assert m.encoder.dtype == torch.bfloat16 and m.projector.net[0].weight.dtype == torch.float32
    out = m(samples[:2], training=True)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()  # the gradient flows back through the cast into the bf16 encoder
    assert m.projector.net[0].weight.grad is not None
    assert any(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in m.encoder.parameters())
    scores = m.eval().score_options(samples[:2]).scores
    assert all(torch.isfinite(torch.tensor(s)).all() for s in scores)
    # under autocast (*-mixed precision) the features pass untouched: the training path's numerics stay as they were
    feats = torch.ones(2, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m.to_head_dtype(feats) is feats
    assert m.to_head_dtype(feats).dtype == torch.float32
