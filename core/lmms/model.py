"""``DynVLM``: a dynvlm checkpoint as an lmms-eval chat model (``lmms-eval --model dynvlm``).

``--model_args checkpoint=PATH[,key=value...]``:

============================ ==================================================================
key                          meaning
============================ ==================================================================
``checkpoint``               a dynvlm ``.ckpt``, file or sharded folder (its saved config rebuilds the model)
``config``                   a run config file: the evaluated setting (alone: its own weights)
``mode``                     ``generate`` (default), ``loglik`` or ``cloze`` (the likeliest letter)
``compressor``               compressor name to use instead of the trained one (e.g. ``tome``)
``tokens_per_frame``         fixed ``M`` (``none``/``dynamic`` = the budget rule)
``max_tokens``               ``N_max``, the per-video visual-token budget
``min_tokens_per_frame``     ``m_min``
``max_frames``, ``fps``      frame sampling (``budget.max_frames``, ``budget.fps``)
``backend``                  video decoder: ``auto``, ``decord`` or ``pyav``
``max_new_tokens``           generation length when the task does not set one
``device``, ``dtype``        where to run (default: cuda if available) and autocast dtype
``a.b.c``                    any other run-config key (dotted), e.g. ``model.compressor.backend``
============================ ==================================================================

So one checkpoint is evaluated at several budgets by changing ``model_args`` only.

Prompts: each lmms-eval message becomes one dynvlm human turn, a video (or image) part becoming
the ``<video>`` (``<image>``) placeholder and text parts joined by new lines, so a task whose
text is ``"{question}\\nA. ...\\n{instruction}"`` sees exactly the prompt ``dynvlm eval`` builds.
Videos are decoded by :func:`dynvlm.data.video.read_video` with the run's ``budget.fps`` and
``budget.max_frames``.

A video that cannot be read is logged by name and its request answered with
:data:`UNANSWERED` (``""``; log-likelihood ``-inf``): the question counts as unanswered. The
local task files (experiments/lmms_tasks) score such a question 0 before the benchmark's own
scoring can pick a random option for it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from tqdm import tqdm

from dynvlm.data.annotations import mc_question
from dynvlm.data.benchmarks import detect_benchmark
from dynvlm.data.images import IMAGES_KIND, image_array, images_prompt, stack_images
from dynvlm.data.video import VideoReadError, read_video
from dynvlm.lmms.loading import load_model
from dynvlm.records import Sample, Turn

log = logging.getLogger("dynvlm.lmms")

UNANSWERED = ""  # the answer of a request whose video could not be read
MODES = ("generate", "loglik", "cloze")  # how a generation request is answered (model_args mode)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DynVLM(lmms):
    """A dynvlm :class:`VideoLLM` checkpoint served to lmms-eval as a chat model.

    Args:
        checkpoint: path of a ``.ckpt`` written by ``dynvlm fit`` (a file, or FSDP's sharded folder).
        config: a run config file: the evaluated setting (as ``dynvlm eval CONFIG``); without a
            checkpoint the config's own weights are used.
        mode: ``generate`` (default: the task's generation request is answered by generating),
            ``loglik`` or ``cloze``: the request is answered with the letter of the option whose
            letter (``loglik``) or text (``cloze``) is most likely — ``dynvlm eval``'s
            ``eval.mode``, for models that answer in words (the task then reads that letter).
        compressor, tokens_per_frame, max_tokens, min_tokens_per_frame, max_frames, fps, backend:
            budget and compressor overrides (see the module docstring).
        max_new_tokens: generation length when a request's ``gen_kwargs`` have none.
        device: ``cuda``, ``cuda:1``, ``cpu``, ... (default: cuda when available).
        dtype: autocast dtype on CUDA (``bfloat16``/``float16``); ``float32`` runs without autocast.
        batch_size: requests per model call (lmms-eval passes it as a string).
        **kwargs: dotted run-config overrides (``model.compressor.backend=torch``); lmms-eval's own
            extra arguments (``max_batch_size``) are ignored.
    """

    is_simple = False

    def __init__(self, checkpoint: str | None = None, config: str | None = None, mode: str = "generate",
                 compressor: str | None = None, tokens_per_frame: Any = None,
                 max_tokens: Any = None, min_tokens_per_frame: Any = None, max_frames: Any = None, fps: Any = None,
                 backend: str | None = None, max_new_tokens: int | None = None, device: str | None = None,
                 dtype: str = "float32", batch_size: int | str = 1, **kwargs: Any) -> None:
        super().__init__()
        overrides = {k: v for k, v in kwargs.items() if "." in k}
        ignored = sorted(k for k in kwargs if "." not in k)
        if ignored:
            log.warning("dynvlm: ignoring model_args %s", ignored)
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}; valid: {', '.join(DTYPES)}")
        if mode not in MODES:
            raise ValueError(f"dynvlm model_args mode={mode!r}; valid: {', '.join(MODES)}")
        self.mode = mode
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_model(checkpoint, config, compressor=compressor, backend=backend, overrides=overrides,
                                     tokens_per_frame=tokens_per_frame, max_tokens=max_tokens,
                                     min_tokens_per_frame=min_tokens_per_frame, max_frames=max_frames, fps=fps)
        self.model.to(self.device)
        self.checkpoint = str(checkpoint)
        cfg = self.model.hparams["config"]
        self.budget_cfg = dict(cfg.get("budget") or {})
        self.backend = (cfg.get("data") or {}).get("backend", "auto")
        self.dtype = DTYPES[dtype]
        self.batch_size = max(1, int(batch_size)) if str(batch_size).isdigit() else 1  # lmms-eval may pass 'auto'
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens else self.model.eval_cfg.max_new_tokens
        self.missing: list[str] = []  # videos that could not be read, in request order
        log.info("dynvlm: %s, compressor %s, budget %s", checkpoint, cfg["model"]["compressor"], self.budget_cfg)

    # -- inputs -----------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        enabled = self.device.type == "cuda" and self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    def _read(self, media: Any) -> tuple[torch.Tensor, list[float], str] | None:
        """A video/image path (or a PIL image) -> (uint8 ``[T, H, W, 3]`` frames, timestamps, kind);
        ``None`` (logged by name) when it cannot be read."""
        if hasattr(media, "convert"):  # a PIL image
            return torch.from_numpy(np.asarray(media.convert("RGB")).copy())[None], [0.0], "image"
        try:
            clip = read_video(str(media), fps=self.budget_cfg.get("fps", 1.0),
                              max_frames=self.budget_cfg.get("max_frames", 128), backend=self.backend)
        except VideoReadError as exc:
            log.error("dynvlm: cannot read video %s (%s): the question counts as unanswered", exc.path, exc.reason)
            self.missing.append(str(media))
            return None
        kind = "image" if clip.backend == "image" else "video"
        return torch.from_numpy(clip.frames), list(clip.timestamps), kind

    def _human_turn(self, messages: Any) -> tuple[str, list[Any]]:
        """lmms-eval messages (``ChatMessages`` or their dict form) -> (human-turn text with a placeholder
        where the media was, media)."""
        if not isinstance(messages, ChatMessages):
            messages = ChatMessages(messages=list(messages))
        parts, media = [], []
        for message in messages.messages:
            if message.role == "system":
                continue
            for content in message.content:
                if content.type == "text":
                    parts.append(content.text)
                elif content.type in ("video", "image"):
                    parts.append("<media>")
                    media.append(content.url)
        return "\n".join(parts), media

    def _sample(self, text: str, media: Sequence[Any], doc_id: Any, history: Sequence[Turn] = ()) -> Sample | None:
        """A :class:`Sample` of the conversation ``history + [human text]``; ``None`` when its video is unreadable."""
        if not media:
            raise ValueError(f"doc {doc_id}: dynvlm needs one video or image per request, got none")
        if len(media) > 1 and all(_is_image(m) for m in media):
            return self._images_sample(text, media, doc_id, history)
        if len(media) > 1:  # a dynvlm sample holds one video; later media are dropped
            log.warning("dynvlm: %d media in one request; only the first is used", len(media))
            head, _, tail = text.partition("<media>")
            text = head + "<media>" + tail.replace("<media>\n", "").replace("<media>", "")
        read = self._read(media[0])
        if read is None:
            return None
        frames, timestamps, kind = read
        text = text.replace("<media>", f"<{kind}>", 1)
        return Sample(frames, timestamps, [*history, Turn("human", text)], kind, str(doc_id), str(media[0]), {})

    def _images_sample(self, text: str, media: Sequence[Any], doc_id: Any, history: Sequence[Turn]) -> Sample | None:
        """Several images of one request -> a ``kind="images"`` sample, built as ``dynvlm eval`` builds
        it (:mod:`dynvlm.data.images`): the same pixels and the same ``<image>`` placement."""
        try:
            frames = stack_images([image_array(m) for m in media])
        except VideoReadError as exc:
            log.error("dynvlm: cannot read image %s (%s): the question counts as unanswered", exc.path, exc.reason)
            self.missing.append(str(exc.path))
            return None
        words = "\n".join(line for line in text.split("\n") if line != "<media>")
        turn = Turn("human", images_prompt(words, len(media)))
        return Sample(frames, [float(i) for i in range(len(media))], [*history, turn], IMAGES_KIND, str(doc_id), "", {})

    def _choose(self, sample: Sample, doc: Any) -> str:
        """``mode`` loglik/cloze: the letter of the most likely option of ``doc``'s question (read with
        :mod:`dynvlm.data.benchmarks`, or dynvlm's generic reader), as ``dynvlm eval`` scores it."""
        record = {k: v for k, v in dict(doc).items() if v is not None}
        bench = detect_benchmark(record)
        q = bench.question(record, f"doc {sample.id}") if bench else mc_question(record, f"doc {sample.id}")
        sample.meta.update(options=q.options, question=q.question)
        with self._autocast():
            scores = self.model.score_options([sample], cloze=self.mode == "cloze").scores[0]
        return chr(ord("A") + max(range(len(scores)), key=scores.__getitem__))

    # -- requests ---------------------------------------------------------------------------------
    def _generate(self, samples: Sequence[Sample], gen_kwargs: dict[str, Any]) -> list[str]:
        """Greedy answers, cut at the first of ``gen_kwargs["until"]``."""
        max_new = int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens)
        with self._autocast():
            texts = self.model.generate(list(samples), max_new_tokens=max_new).texts
        return [_cut(t, gen_kwargs.get("until")) for t in texts]

    def _inputs(self, req: Instance) -> tuple[str, list[Any], dict[str, Any], Any]:
        """A chat request ``(ctx, doc_to_messages, gen_kwargs, doc_id, task, split)`` -> (text, media, gen_kwargs, doc_id)."""
        _ctx, doc_to_messages, gen_kwargs, doc_id, task, split = req.args
        text, media = self._human_turn(doc_to_messages(self.task_dict[task][split][doc_id]))
        return text, media, dict(gen_kwargs or {}), doc_id

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers to generation requests, in order (:data:`UNANSWERED` where the video is unreadable)."""
        answers: list[str] = [UNANSWERED] * len(requests)
        todo: list[tuple[int, Sample, dict[str, Any]]] = []
        for i, req in enumerate(tqdm(requests, disable=self.rank != 0, desc="dynvlm: reading")):
            text, media, gen_kwargs, doc_id = self._inputs(req)
            sample = self._sample(text, media, doc_id)
            if sample is not None and self.mode != "generate":
                doc_id, task, split = req.args[-3:]
                answers[i] = self._choose(sample, self.task_dict[task][split][doc_id])
            elif sample is not None:
                todo.append((i, sample, gen_kwargs))
        for lo in tqdm(range(0, len(todo), self.batch_size), disable=self.rank != 0, desc="dynvlm: generating"):
            groups: dict[str, list[tuple[int, Sample, dict[str, Any]]]] = {}
            for item in todo[lo : lo + self.batch_size]:
                groups.setdefault(repr(sorted(item[2].items())), []).append(item)
            for group in groups.values():
                for (i, _, _), text in zip(group, self._generate([s for _, s, _ in group], group[0][2])):
                    answers[i] = text
        return answers

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Multi-round answers: round 0 asks ``doc_to_messages(doc)``, later rounds
        ``doc_to_messages(doc, round_idx=r, previous_output=[...], previous_round_info=...)`` until it
        says ``terminal``; the conversation (with the model's answers) is kept across rounds."""
        results: list[list[str]] = []
        for req in tqdm(requests, disable=self.rank != 0, desc="dynvlm: multi-round"):
            _ctx, doc_to_messages, gen_kwargs, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            text, media = self._human_turn(doc_to_messages(doc))
            sample = self._sample(text, media, doc_id)
            if sample is None:
                results.append([UNANSWERED])
                continue
            outputs: list[str] = []
            info = None
            while True:
                outputs.append(self._generate([sample], dict(gen_kwargs or {}))[0])
                payload = doc_to_messages(doc, round_idx=len(outputs), previous_output=list(outputs),
                                          previous_round_info=info)
                if not (isinstance(payload, tuple) and len(payload) == 4):
                    break
                messages, terminal, _, info = payload
                if terminal or messages is None:
                    break
                follow_up, _ = self._human_turn(messages)
                follow_up = follow_up.replace("<media>", "").strip()
                conv = [*sample.conversation, Turn("gpt", outputs[-1]), Turn("human", follow_up)]
                sample = Sample(sample.frames, sample.timestamps, conv, sample.kind, sample.id, sample.source, {})
            results.append(outputs)
        return results

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(log p(continuation | video, context), is_greedy)`` for ``(ctx, continuation, doc_to_visual,
        doc_id, task, split)`` requests.

        The continuation (stripped) is scored as the answer turn, end of turn included, the way
        :meth:`VideoLLM.score_options` scores option letters; ``(-inf, False)`` when the video
        cannot be read.
        """
        out: list[tuple[float, bool]] = []
        visual_cache: dict[tuple[str, str, int], tuple[Sample, Any, torch.Tensor]] = {}
        for req in tqdm(requests, disable=self.rank != 0, desc="dynvlm: loglikelihood"):
            ctx, continuation, doc_to_visual, doc_id, task, split = req.args
            media = list(doc_to_visual(self.task_dict[task][split][doc_id]) or [])
            key = (task, split, doc_id)
            if key not in visual_cache:
                visual_cache.clear()  # requests come grouped by document; keep one
                sample = self._sample(f"<media>\n{ctx}", media, doc_id)
                if sample is None:
                    out.append((-math.inf, False))
                    continue
                plan = self.model.plan([sample])[0]
                with self._autocast():
                    visual = self.model.visual_features([sample], [plan]).tokens[0]
                visual_cache[key] = (sample, plan, visual)
            sample, plan, visual = visual_cache[key]
            out.append(self._score(sample, plan, visual, str(continuation).strip()))
        return out

    def _score(self, sample: Sample, plan: Any, visual: torch.Tensor, answer: str) -> tuple[float, bool]:
        m = self.model
        conv = [*sample.conversation, Turn("gpt", answer)]
        prompt = m.prompts.collate(m.encode_prompts([sample], [plan], [conv]), "right")
        with self._autocast():
            embeds = m.splice(prompt, [visual])
            logits = m.llm(embeds, prompt.attention_mask.to(m.device)).logits
        start, end = prompt.answer_spans[0][-1]
        targets = prompt.labels.to(m.device)[0, start:end]
        logp = torch.log_softmax(logits[0, start - 1 : end - 1].float(), dim=-1)  # logits at t-1 predict t
        score = float(logp.gather(1, targets[:, None]).sum())
        return score, bool((logp.argmax(-1) == targets).all())

    # -- lmms-eval bookkeeping ----------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size


def _cut(text: str, until: Iterable[str] | str | None) -> str:
    """``text`` up to the first stop string of ``until``."""
    if isinstance(until, str):
        until = [until]
    for stop in until or ():
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text.strip()


class DynVLMSimple(DynVLM):
    """The same model as an lmms-eval *simple* model (``lmms-eval --model dynvlm --force_simple``).

    lmms-eval 0.7.3 sends a chat model generation requests only; log-likelihood tasks
    (``output_type: multiple_choice``, e.g. ``egoschema_subset_mcppl``) need this variant. Its
    generation requests are ``(ctx, gen_kwargs, doc_to_visual, doc_id, task, split)``.
    """

    is_simple = True

    def _inputs(self, req: Instance) -> tuple[str, list[Any], dict[str, Any], Any]:
        ctx, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
        media = list(doc_to_visual(self.task_dict[task][split][doc_id]) or [])
        return f"<media>\n{ctx}", media, dict(gen_kwargs or {}), doc_id

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        raise NotImplementedError("dynvlm: multi-round tasks need the chat model (run without --force_simple)")



def _is_image(media: Any) -> bool:
    """A PIL image, an image cell (``{"bytes", "path"}``) or an image file path."""
    if hasattr(media, "convert") or isinstance(media, dict):
        return True
    return str(media).lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"))
