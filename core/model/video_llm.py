"""``VideoLLM``: encoder -> compressor -> projector -> splice into the LLM, as a LightningModule.

One step: the budget policy plans frames and tokens per frame ``M`` for
each sample; all kept frames go through the encoder at once (``[F, N, C]``), the compressor
(``[F, M, C]``, one call per distinct ``M``), the projector (``[F, M, D]``); the prompt builder
tokenises the conversations with ``M`` visual positions per ``<image>``, and the projected
tokens are scattered into those positions of the LLM's input embeddings. Loss = LLM loss on
the answers + ``optim.aux_weight`` x the compressor's auxiliary loss.

Pretrained video LLMs that run another order (LLaVA-OneVision, :mod:`dynvlm.model.llava_onevision`)
are served by three model options, all off by default: ``model.compressor_at: after_projector``
(project ``[F, N, D]``, then compress to ``[F, M, D]``), ``model.projector.separator`` (a learned
vector after each video's tokens) and ``model.prompt`` (the prompt format plugin).

Nothing here assumes one process: the strategy (DDP, FSDP, DeepSpeed) comes from the trainer
config, metrics that need every rank's predictions are gathered explicitly.

Checkpoints hold only the trainable weights (plus weights carried over from a previous stage's
checkpoint) and the resolved config (``hyper_parameters["config"]``).
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import Tensor

from dynvlm.budget import BudgetPolicy, FramePlan, VideoInfo
from dynvlm.config import build_component, provenance_record
from dynvlm.data.images import IMAGES_KIND
from dynvlm.data.questions import vocabulary
from dynvlm.model.checkpoint import (
    CKPT_KEY,
    check_checkpoint_fits,
    load_weights,
    read_weights,
    stale_compressor_weights,
)
from dynvlm.model.optim import clean_name, clip_gradients, param_groups
from dynvlm.model.projector import Projector
from dynvlm.model.prompt import Encoded, PromptBatch, PromptBuilder
from dynvlm.model.stages import apply_stage, stage_config
from dynvlm.records import Batch, Sample, Turn, VisualUsage, question_turns
from dynvlm.schema import DEFAULT_PROMPT, MODEL_OPTIONS, EvalConfig, OptimConfig, ProjectorConfig, section
from dynvlm.scoring.records import accuracy_metrics, mc_records, open_records, unique_records
from dynvlm.util.configs import config_dict

ENCODER_CHUNK = 256  # frames per encoder call when no gradient is needed
SCORE_SEQUENCES = 16  # (sample, option) sequences per LLM forward in MC scoring: bounds the [B, L, V] logits


#: ``model.llm.vocabulary`` naming the synthetic task's word list
SYNTHETIC_VOCABULARY = "synthetic"


def with_named_vocabulary(llm_spec: Mapping[str, Any]) -> dict[str, Any]:
    """``llm_spec`` with ``vocabulary: synthetic`` replaced by the synthetic task's word list
    (:func:`dynvlm.data.questions.vocabulary`), so LLM plugins need not know the data side."""
    spec = dict(llm_spec)
    if spec.get("vocabulary") == SYNTHETIC_VOCABULARY:
        spec["vocabulary"] = vocabulary()
    return spec


def compressor_place(model_cfg: Mapping[str, Any]) -> str:
    """``model.compressor_at`` of a model config: ``before_projector`` (the default) or ``after_projector``."""
    place = model_cfg.get("compressor_at") or "before_projector"
    places = typing.get_args(MODEL_OPTIONS["compressor_at"])
    if place not in places:
        raise ValueError(f"model.compressor_at: {place!r} is not one of {', '.join(places)}")
    return place


class VisualFeatures(NamedTuple):
    """:meth:`VideoLLM.visual_features`: projected visual tokens ``[T_i * M_i, D]`` per sample, the
    compressors' summed aux loss (``None`` when none has one) and each sample's usage."""

    tokens: list[Tensor]
    aux_loss: Tensor | None
    usage: list[VisualUsage]


class Generated(NamedTuple):
    """:meth:`VideoLLM.generate`: one answer text and one :class:`~dynvlm.records.VisualUsage` per sample."""

    texts: list[str]
    usage: list[VisualUsage]


class Scored(NamedTuple):
    """:meth:`VideoLLM.score_options`: ``[B][options]`` log-likelihoods and one usage per sample."""

    scores: list[list[float]]
    usage: list[VisualUsage]


class VideoLLM(pl.LightningModule):
    """The video LLM of one run config.

    Args:
        config: the run config (``model.{encoder,compressor,llm,projector}``, ``budget``, ``optim``,
            ``stage``, ``eval``); other sections are kept in the hparams but unused here.
        provenance: ignored (recomputed); accepted so ``load_from_checkpoint`` can pass hparams back.

    Batches are :class:`dynvlm.records.Batch` (or a list of :class:`Sample`); frames stay where
    the data put them and are moved to the module's device when encoded.
    """

    def __init__(self, config: DictConfig | Mapping[str, Any], provenance: Mapping[str, str] | None = None) -> None:
        super().__init__()
        cfg = config_dict(config)
        model_cfg = cfg.get("model") or {}
        for key in ("encoder", "compressor", "llm"):
            if not model_cfg.get(key):
                raise ValueError(f"model.{key}: missing; a run config needs model.encoder, model.compressor and model.llm")
        self.encoder = build_component("encoder", model_cfg["encoder"])
        self.compressor_at = compressor_place(model_cfg)
        if self.compressor_at == "before_projector":  # built in this order: inline random inits keep their draws
            self.compressor = build_component("compressor", model_cfg["compressor"], dim=self.encoder.width)
        self.llm = build_component("llm", with_named_vocabulary(model_cfg["llm"]))
        if self.compressor_at == "after_projector":
            self.compressor = build_component("compressor", model_cfg["compressor"], dim=self.llm.width)
            if self.compressor.needs_encoder_width:
                raise ValueError(f"model.compressor {model_cfg['compressor'].get('name')!r} needs the encoder's tokens "
                                 "(needs_encoder_width); it cannot run after the projector (model.compressor_at)")
        proj = section(ProjectorConfig, model_cfg.get("projector"), "model.projector")
        if getattr(self.encoder, "downsample", False) and not self.compressor.keeps_all:
            # refused here, not at the first batch: a misconfigured run must not start training
            raise ValueError("model.encoder.downsample: true already yields the planned tokens per frame; "
                             "it needs model.compressor.name: identity (a second compressor would be a no-op)")
        self.projector = Projector(self.encoder.width, self.llm.width, depth=proj.depth, hidden=proj.hidden,
                                   separator=proj.separator)
        self.budget = BudgetPolicy(cfg.get("budget"), self.encoder.grid, self._achievable)
        self.prompt_format = build_component("prompt", model_cfg.get("prompt") or {"name": DEFAULT_PROMPT})
        self.prompts = PromptBuilder(self.llm.tokenizer, getattr(self.llm, "system_prompt", None),
                                     format=self.prompt_format, separator=proj.separator)
        self.optim_cfg: OptimConfig = section(OptimConfig, cfg.get("optim"), "optim")
        if self.optim_cfg.answer_only_loss and not hasattr(self.llm, "answer_loss"):
            raise ValueError(f"optim.answer_only_loss: the LLM {type(self.llm).__name__} has no answer_loss method")
        self.eval_cfg: EvalConfig = section(EvalConfig, cfg.get("eval"), "eval")
        self.stage = stage_config(cfg.get("stage"))
        self.trainable = apply_stage(self, self.stage)
        self.carried: set[str] = set()
        if self.stage.resume_from:
            # a base's file may carry the scorer of the compressor it was trained with
            self.carried = set(load_weights(self, read_weights(self.stage.resume_from), self.stage.resume_from,
                                            optional=("compressor.",)))
        self.strict_loading = False  # checkpoints hold only trainable (+ carried) weights
        self.save_hyperparameters(
            {"config": cfg, "provenance": provenance_record(self.encoder, self.compressor, self.llm, self.budget.policy)}
        )
        self.predictions_path: Path | None = None  # set by dynvlm.run.train.test to write per-question results
        self._eval_records: list[dict[str, Any]] = []

    # -- visual path ------------------------------------------------------------------------
    def _achievable(self, tokens: int, grid: tuple[int, int]) -> int:
        # looked up on each call: a callback may swap self.compressor between batches
        if getattr(self.encoder, "downsample", False):  # the encoder's resized grid serves M, not the compressor
            return self.encoder.downsample_tokens(tokens)
        return self.compressor.achievable(tokens, grid)

    def plan(self, samples: Sequence[Sample], training: bool = False) -> list[FramePlan]:
        """Budget plans (kept frame indices, tokens per frame) for ``samples``.

        The policy sees each sample's timestamps, ``meta["duration"]`` and decoded frames
        (:meth:`dynvlm.budget.VideoInfo.from_sample`): ``keyframes`` picks frames by their pixels.
        A question about several images (``kind="images"``) keeps every image
        (:meth:`dynvlm.budget.BudgetPolicy.plan_images`).
        """
        for s in samples:
            if s.frames.dim() != 4 or s.frames.shape[-1] != 3:
                raise ValueError(f"sample {s.id!r}: frames must be [T, H, W, 3], got {tuple(s.frames.shape)}")
            if len(s.timestamps) != s.frames.shape[0]:
                raise ValueError(f"sample {s.id!r}: {len(s.timestamps)} timestamps for {s.frames.shape[0]} frames")
        plans = self.budget.plan_batch([VideoInfo.from_sample(s) for s in samples], training=training)
        if any(s.kind == IMAGES_KIND for s in samples):  # several images in one question: every one is kept
            plans = [self.budget.plan_images(len(s.timestamps)) if s.kind == IMAGES_KIND else p
                     for s, p in zip(samples, plans)]
        return plans

    def visual_features(self, samples: Sequence[Sample], plans: Sequence[FramePlan]) -> VisualFeatures:
        """Kept frames of each sample -> projected visual tokens ``[T_i * M_i, D]`` per sample, the aux
        loss, and each sample's :class:`~dynvlm.records.VisualUsage` (planned tokens, kept timestamps;
        :meth:`splice` fills in the actual tokens).

        All frames are encoded together (``[F, N, C]``); the compressor runs once per distinct ``M``.
        With the encoder's ``downsample`` option each ``M`` group is instead encoded at its own
        resized ``a x b`` grid (``a*b = M``) and goes through the ``identity`` compressor.
        """
        frames = torch.cat([s.frames[list(p.indices)] for s, p in zip(samples, plans)]).to(self.device)
        counts = [len(p.indices) for p in plans]
        per_frame_m = torch.tensor([p.tokens for p, c in zip(plans, counts) for _ in range(c)])
        pixels = self.encoder.preprocess(frames)
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.encoder.parameters())
        downsample = bool(getattr(self.encoder, "downsample", False))

        def encode(px: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
            kw = {} if grid is None else {"grid": grid}  # only downsampling encoders take a grid
            with torch.set_grad_enabled(grad):
                if grad or len(px) <= ENCODER_CHUNK:
                    return self.to_head_dtype(self.encoder(px, **kw))  # [F, a*b, C]
                # evaluation of long videos: bound the encoder's working memory
                return self.to_head_dtype(torch.cat([self.encoder(c, **kw) for c in px.split(ENCODER_CHUNK)]))

        after = self.compressor_at == "after_projector"  # LLaVA-OneVision's order: project every patch, then compress
        feats = None if downsample else encode(pixels)  # [F, N, C]
        if after and feats is not None:
            feats = self.projector(feats)  # [F, N, D]
        outputs: dict[int, Tensor] = {}
        aux: Tensor | None = None
        groups = sorted(set(per_frame_m.tolist()))
        for m in groups:
            idx = (per_frame_m == m).nonzero().squeeze(1)
            if downsample:
                grid = self.encoder.downsample_grid(int(m))
                px = pixels if len(groups) == 1 else pixels[idx.to(pixels.device)]
                x = encode(self.encoder.resize_to_grid(px, grid), grid)  # [f, a*b, C]
                x = self.projector(x) if after else x
            else:
                grid = self.encoder.grid
                x = feats if len(groups) == 1 else feats[idx.to(feats.device)]  # training: one M, no gather
            out = self.compressor(x, grid, int(m))
            if out.x.shape[1] != m:
                raise RuntimeError(f"compressor returned {out.x.shape[1]} tokens per frame for a planned {m} "
                                   "(its achievable() must report exact counts)")
            outputs[m] = out.x if after else self.projector(out.x)  # [f, M, D]
            if out.aux_loss is not None:
                aux = out.aux_loss if aux is None else aux + out.aux_loss
        # every frame of a sample shares its M, so each sample is one contiguous slice of its group
        cursor = dict.fromkeys(outputs, 0)
        per_sample = []
        for p, c in zip(plans, counts):
            group = outputs[p.tokens]
            per_sample.append(group[cursor[p.tokens] : cursor[p.tokens] + c].reshape(-1, group.shape[-1]))
            cursor[p.tokens] += c
        sep = self.projector.separator  # one learned position after each video's frames
        if sep is not None:
            per_sample = [torch.cat([t, sep[None].to(t.dtype)]) if s.kind == "video" else t
                          for s, t in zip(samples, per_sample)]
        usage = [VisualUsage(p.visual_tokens, [s.timestamps[i] for i in p.indices]) for s, p in zip(samples, plans)]
        return VisualFeatures(per_sample, aux, usage)

    def to_head_dtype(self, feats: Tensor) -> Tensor:
        """Encoder features ``feats`` in the dtype the projector (and the compressor) compute in, outside autocast.

        A recipe may load the encoder in bf16 (``model.encoder.dtype``) while the projector and a compressor's
        scorer are built in fp32. Under ``*-mixed`` precision autocast picks each operation's dtype, so the
        features are returned as they are (the training path's numerics do not change). Without autocast
        (``32-true``, or a model run outside the Trainer: ``dynvlm cost``, the lmms-eval bridge) a bf16 tensor
        would meet fp32 weights (``mat1 and mat2 must have the same dtype``): each part computes in the dtype
        its own parameters were built in, and the boundary casts, as :meth:`splice` does into the LLM.
        """
        kind = feats.device.type
        if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
            return feats
        dtype = self.projector.net[0].weight.dtype
        return feats.to(dtype) if feats.is_floating_point() and feats.dtype != dtype else feats

    def splice(self, batch: PromptBatch, visual: Sequence[Tensor], owners: Sequence[int] | None = None,
               usage: Sequence[VisualUsage] | None = None) -> Tensor:
        """LLM input embeddings ``[B, L, D]`` with the visual tokens scattered into the visual positions.

        Args:
            batch: ``B`` collated prompts; ``visual_mask`` ``[B, L]`` marks the visual positions.
            visual: ``B`` tensors ``[V_b, D]``, row ``b``'s visual tokens in order.
            owners: for each row, the index of its sample in ``usage`` (default: row ``b`` is sample
                ``b``; MC scoring repeats a sample once per option).
            usage: the :meth:`visual_features` call's usage records: each owner's ``actual_tokens``
                is set to the visual positions its prompt row really holds, measured from the mask
                independently of the plan.
        """
        embeds = self.llm.embed(batch.input_ids.to(self.device))
        vis = torch.cat(list(visual)).to(embeds.dtype)
        mask = batch.visual_mask.to(self.device)
        filled = [int(n) for n in batch.visual_mask.sum(1).tolist()]  # [B]: visual positions per row (host copy: no sync)
        if sum(filled) != vis.shape[0]:
            raise RuntimeError(f"{sum(filled)} visual positions in the prompt but {vis.shape[0]} visual tokens")
        if usage is not None:
            for row, owner in enumerate(owners if owners is not None else range(len(filled))):
                usage[owner].actual_tokens = filled[row]
        return embeds.masked_scatter(mask.unsqueeze(-1), vis)

    def encode_prompts(self, samples: Sequence[Sample], plans: Sequence[FramePlan],
                       conversations: Sequence[Sequence[Turn]] | None = None, generation_prompt: bool = False) -> list[Encoded]:
        """Tokenise each sample's conversation (or the given ``conversations``) for its plan."""
        convs = conversations if conversations is not None else [s.conversation for s in samples]
        return [
            self.prompts.encode(conv, [s.timestamps[i] for i in p.indices], p.tokens, s.kind, generation_prompt)
            for s, p, conv in zip(samples, plans, convs)
        ]

    # -- losses --------------------------------------------------------------------------------
    def forward(self, samples: Batch | Sequence[Sample], training: bool = False) -> dict[str, Tensor]:
        """Loss of a batch: ``{"loss", "lm_loss", "aux_loss", "tokens_per_frame", "frames", "visual_tokens",
        "actual_tokens"}`` (the last three are means per sample; ``visual_tokens`` is the planned count,
        ``actual_tokens`` the visual positions the spliced prompts really held)."""
        samples = _samples(samples)
        plans = self.plan(samples, training=training)
        prompt = self.prompts.collate(self.encode_prompts(samples, plans), "right")
        visual, aux, usage = self.visual_features(samples, plans)
        embeds = self.splice(prompt, visual, usage=usage)
        if self.optim_cfg.answer_only_loss:  # LM head and loss on the label positions only
            lm_loss = self.llm.answer_loss(embeds, prompt.attention_mask.to(self.device), prompt.labels)
        else:
            lm_loss = self.llm(embeds, prompt.attention_mask.to(self.device), prompt.labels.to(self.device)).loss
        aux_loss = aux if aux is not None else lm_loss.new_zeros(())
        return {
            "loss": lm_loss + self.optim_cfg.aux_weight * aux_loss,
            "lm_loss": lm_loss.detach(),
            "aux_loss": aux_loss.detach(),
            "tokens_per_frame": torch.tensor(float(sum(p.tokens for p in plans)) / len(plans)),
            "frames": torch.tensor(float(sum(len(p.indices) for p in plans)) / len(plans)),
            "visual_tokens": torch.tensor(float(sum(p.visual_tokens for p in plans)) / len(plans)),
            "actual_tokens": torch.tensor(float(sum(u.actual_tokens for u in usage)) / len(plans)),
        }

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        if not _has_samples(batch):
            return None  # every file of the batch was skipped by the data side: no step
        out = self(batch, training=True)
        n = len(_samples(batch))
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=n)
        for k in ("lm_loss", "aux_loss", "tokens_per_frame", "frames", "visual_tokens", "actual_tokens"):
            self.log(f"train/{k}", out[k], batch_size=n)
        return out["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if not _has_samples(batch):
            return
        samples = _samples(batch)
        out = self(samples, training=False)
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=len(samples), sync_dist=True)
        # mean visual tokens per sample, planned by the budget and really spliced (floats: Lightning
        # puts them on the module's device, which a distributed sync needs)
        self.log("val/tokens/planned", float(out["visual_tokens"]), batch_size=len(samples), sync_dist=True)
        self.log("val/tokens/actual", float(out["actual_tokens"]), batch_size=len(samples), sync_dist=True)
        self._eval_records.extend(mc_records(self, samples, self.eval_cfg.mode, self.eval_cfg.reading))

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        if not _has_samples(batch):
            return
        samples = _samples(batch)
        self._eval_records.extend(mc_records(self, samples, self.eval_cfg.mode, self.eval_cfg.reading) + open_records(self, samples))

    def on_validation_epoch_start(self) -> None:
        self._eval_records = []

    def on_test_epoch_start(self) -> None:
        self._eval_records = []

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val", write=False)

    def on_test_epoch_end(self) -> None:
        self._log_accuracy("test", write=True)

    # -- multiple choice and generation ---------------------------------------------------------
    @torch.no_grad()
    def generate(self, samples: Batch | Sequence[Sample], max_new_tokens: int | None = None) -> Generated:
        """Open-ended answers to each sample's last human turn (a trailing gpt turn is dropped):
        ``Generated(texts, usage)``, one stripped text and one :class:`~dynvlm.records.VisualUsage` per sample."""
        samples = _samples(samples)
        plans = self.plan(samples)
        convs = [question_turns(s.conversation) for s in samples]
        prompt = self.prompts.collate(self.encode_prompts(samples, plans, convs, generation_prompt=True), "left")
        visual, _, usage = self.visual_features(samples, plans)
        embeds = self.splice(prompt, visual, usage=usage)
        new = self.llm.generate(embeds, prompt.attention_mask.to(self.device),
                                max_new_tokens=max_new_tokens or self.eval_cfg.max_new_tokens)
        if hasattr(self.llm, "decode"):
            texts = self.llm.decode(new)
        else:
            texts = self.llm.tokenizer.batch_decode(new, skip_special_tokens=True)
        return Generated([t.strip() for t in texts], usage)

    @torch.no_grad()
    def score_options(self, samples: Batch | Sequence[Sample], shared_prompt: bool = True,
                      cloze: bool = False) -> Scored:
        """Per-option log-likelihood for multiple-choice samples: ``Scored(scores, usage)``, ``scores``
        being ``[B][options]`` floats and ``usage`` one :class:`~dynvlm.records.VisualUsage` per sample.

        Each sample needs ``meta["options"]``; its final gpt turn is replaced by each answer in
        turn and the summed log-probability of that answer's tokens (incl. end of turn) is scored.
        The answers are the letters (``A``, ``B``, ...) after the question as asked, or with
        ``cloze`` the options' own texts after the bare question (``meta["question"]``, no option
        list): the cloze form of multiple choice that small language models are scored with,
        since it does not need the model to map letters to options.
        The visual tokens are computed once per sample. When the LLM offers
        ``continuation_logprobs`` (the ``hf`` plugin) and the template renders each answer right
        after the generation prompt, the prompt runs once per sample and only the answers run
        per option (``shared_prompt``); otherwise every (sample, option) sequence runs in full.
        At most :data:`SCORE_SEQUENCES` (sample, option) sequences go through the LLM at a time.
        """
        samples = _samples(samples)
        plans = self.plan(samples)
        visual, _, usage = self.visual_features(samples, plans)
        fulls: list[list[Encoded]] = []
        bases: list[list[Turn]] = []
        for s, p in zip(samples, plans):
            options = s.meta.get("options")
            if not options:
                raise ValueError(f"sample {s.id!r}: multiple-choice scoring needs meta['options']")
            base = _scoring_prompt(s, cloze)
            answers = [str(o) for o in options] if cloze else [chr(ord("A") + k) for k in range(len(options))]
            convs = [[*base, Turn("gpt", a)] for a in answers]
            bases.append(base)
            fulls.append(self.encode_prompts([s] * len(convs), [p] * len(convs), convs))
        if shared_prompt and hasattr(self.llm, "continuation_logprobs"):
            scores = self._score_shared(samples, plans, visual, fulls, bases, usage)
            if scores is not None:
                return Scored(scores, usage)
        return Scored(self._score_full(visual, fulls, usage), usage)

    def _score_full(self, visual: list[Tensor], fulls: list[list[Encoded]],
                    usage: list[VisualUsage]) -> list[list[float]]:
        items = [e for per in fulls for e in per]
        vis = [visual[i] for i, per in enumerate(fulls) for _ in per]
        owner = [i for i, per in enumerate(fulls) for _ in per]
        scores: list[list[float]] = [[] for _ in fulls]
        for lo in range(0, len(items), SCORE_SEQUENCES):
            prompt = self.prompts.collate(items[lo : lo + SCORE_SEQUENCES], "right")
            embeds = self.splice(prompt, vis[lo : lo + SCORE_SEQUENCES], owner[lo : lo + SCORE_SEQUENCES], usage)
            logits = self.llm(embeds, prompt.attention_mask.to(self.device)).logits
            targets = prompt.labels.to(self.device)
            for row, i in enumerate(owner[lo : lo + SCORE_SEQUENCES]):
                start, end = prompt.answer_spans[row][-1]
                # logits at t-1 predict token t; only the answer's positions are normalised
                logp = torch.log_softmax(logits[row, start - 1 : end - 1].float(), dim=-1)
                scores[i].append(float(logp.gather(1, targets[row, start:end, None]).sum()))
        return scores

    def _score_shared(self, samples: list[Sample], plans: list[FramePlan], visual: list[Tensor],
                      fulls: list[list[Encoded]], bases: list[list[Turn]],
                      usage: list[VisualUsage]) -> list[list[float]] | None:
        """Scores with one prompt pass per sample, or ``None`` when an answer does not directly follow
        the generation prompt (a template that renders assistant turns differently)."""
        prompts = [self.prompts.encode(base, [s.timestamps[i] for i in p.indices], p.tokens, s.kind, True)
                   for s, p, base in zip(samples, plans, bases)]
        continuations = []
        for prompt, per in zip(prompts, fulls):
            conts = []
            for full in per:
                start, end = full.answer_spans[-1]
                if start != len(prompt.ids) or full.ids[:start] != prompt.ids:
                    return None
                conts.append(full.ids[start:end])
            continuations.append(conts)
        per_chunk = max(1, SCORE_SEQUENCES // max(len(c) for c in continuations))
        scores: list[list[float]] = []
        for lo in range(0, len(prompts), per_chunk):
            batch = self.prompts.collate(prompts[lo : lo + per_chunk], "left")
            embeds = self.splice(batch, visual[lo : lo + per_chunk], range(lo, lo + len(prompts[lo : lo + per_chunk])), usage)
            scores += self.llm.continuation_logprobs(embeds, batch.attention_mask.to(self.device),
                                                     continuations[lo : lo + per_chunk])
        return scores

    def _log_accuracy(self, split: str, write: bool) -> None:
        records = unique_records(_gather(self._eval_records))
        self._eval_records = []
        # values are the same on every rank (gathered above), so no further sync
        for name, value in accuracy_metrics(split, records).items():
            self.log(name, value, sync_dist=False)
        if records and write and self.predictions_path is not None and self.global_rank == 0:
            self.predictions_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.predictions_path, "w") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")

    # -- optimisation ------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: encoder at ``lr * encoder_lr_ratio``, the rest at ``lr``; no decay on biases, norms and
        free-standing vectors, decided by role (:func:`dynvlm.model.optim.param_groups`), so FSDP's flat shards
        decay as the unsharded model does."""
        o = self.optim_cfg
        groups = param_groups(self, o.lr, o.weight_decay, o.encoder_lr_ratio)
        if not groups:
            raise ValueError(f"stage {self.stage.name!r}: nothing to train")
        return groups

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim_cfg
        if len(o.betas) != 2:
            raise ValueError(f"optim.betas must hold two values, got {o.betas}")
        optimizer = torch.optim.AdamW(self.param_groups(), lr=o.lr, betas=tuple(o.betas))
        total = None
        if self._trainer is not None:
            est = self.trainer.estimated_stepping_batches
            total = int(est) if est is not None and math.isfinite(est) else None
        lam = _schedule(o.warmup_steps, total, o.schedule)
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lam)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # the trainer's setting wins; otherwise optim.grad_clip (norm) applies
        val = gradient_clip_val if gradient_clip_val is not None else self.optim_cfg.grad_clip
        if val:  # under any strategy: FSDP clips over every rank's shards (dynvlm.model.optim.clip_gradients)
            clip_gradients(self, optimizer, val, gradient_clip_algorithm or "norm")

    # -- checkpoints ---------------------------------------------------------------------------
    def saved_keys(self) -> list[str]:
        """State-dict keys a checkpoint keeps: trainable parameters, carried weights, persistent buffers."""
        # names without FSDP's wrapper parts, and no state_dict() call: under FSDP that would gather every weight
        modules = list(self.named_modules(remove_duplicate=False))  # tied weights under each of their names
        trainable = {clean_name(f"{m}.{n}" if m else n) for m, mod in modules for n, p in mod._parameters.items()
                     if p is not None and p.requires_grad}
        buffers = [clean_name(f"{m}.{b}" if m else b) for m, mod in modules for b, t in mod._buffers.items()
                   if t is not None and b not in mod._non_persistent_buffers_set]
        return list(dict.fromkeys([*sorted(trainable | self.carried), *buffers]))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = set(self.saved_keys())
        sd = checkpoint.get("state_dict")
        if sd is not None and not _is_sharded(sd):  # a sharded checkpoint (FSDP) keeps every weight's shard
            checkpoint["state_dict"] = {k: v for k, v in sd.items() if k in keep}
        checkpoint[CKPT_KEY] = {"trainable": list(self.trainable), "carried": sorted(self.carried),
                                "stage": self.stage.name}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "state_dict" not in checkpoint:  # a sharded checkpoint: the strategy loaded the weights (checked before)
            return
        sd = checkpoint.get("state_dict") or {}
        # evaluated with another compressor than the trained one (training-free transfer): the
        # trained compressor's own weights are dropped with a notice, and only those; a new
        # compressor with parameters the checkpoint lacks raises (dynvlm.model.checkpoint)
        spec = self.hparams["config"]["model"]["compressor"]
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        stale = stale_compressor_weights(checkpoint, spec, self.compressor, fitting=fitting)
        if stale:
            from pytorch_lightning.utilities.rank_zero import rank_zero_warn

            trained = checkpoint["hyper_parameters"]["config"]["model"]["compressor"]["name"]
            rank_zero_warn(f"the checkpoint was trained with compressor {trained!r}: its {len(stale)} weights "
                           f"({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}) are not used by "
                           f"{spec['name']!r} and were dropped")
            for key in stale:
                del sd[key]
        check_checkpoint_fits(self, checkpoint)
        self.carried |= set(checkpoint.get(CKPT_KEY, {}).get("carried", []))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # frames are moved when encoded (after frame selection), the rest of a Batch is text
        if isinstance(batch, Batch) or (isinstance(batch, list) and batch and isinstance(batch[0], Sample)):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


def _scoring_prompt(sample: Sample, cloze: bool) -> list[Turn]:
    """The turns an MC sample's answers are scored after: the conversation without its final
    answer, or for ``cloze`` the bare question (``meta["question"]``) after the visual marker."""
    base = question_turns(sample.conversation)
    if not cloze:
        return base
    question = sample.meta.get("question")
    if not question:
        raise ValueError(f"sample {sample.id!r}: cloze scoring needs meta['question'] (the question without options)")
    marker = "<image>" if sample.kind == "image" else "<video>"
    head = f"{marker}\n" if marker in base[-1].value else ""  # the visual stays where the question had it
    return [*base[:-1], Turn("human", head + question)]


def _is_sharded(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state dict holds shards (FSDP's sharded format: ``ShardedTensor`` or ``DTensor`` values)."""
    return any(type(v).__name__ in ("ShardedTensor", "DTensor") for v in state_dict.values())


def _samples(batch: Batch | Sequence[Sample]) -> list[Sample]:
    samples = list(batch.samples) if isinstance(batch, Batch) else list(batch)
    if not samples:
        raise ValueError("empty batch")
    return samples


def _has_samples(batch: Batch | Sequence[Sample]) -> bool:
    return len(batch.samples if isinstance(batch, Batch) else batch) > 0


def _schedule(warmup: int, total: int | None, kind: str):
    """LR multiplier per step: linear warm-up, then cosine to 0 at ``total`` (or constant)."""

    def lam(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant" or not total or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return lam


def _gather(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's records (in rank order) when running distributed; the local ones otherwise."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return records
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, records)
    return [r for part in parts for r in part]
