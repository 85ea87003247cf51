"""Tiny real models and real decoded videos for the model-side tests (encoders, LLM, VideoLLM, training).

Models are the real ``transformers`` classes with tiny configs, saved with ``save_pretrained``
and loaded back through the plugins by ``path:``. Videos are written with PyAV (H.264) and
decoded with :func:`dynvlm.data.video.read_video`. The task: "what colour is the video?" — the
whole frame is one of three colours, so a few steps of training lower the loss.
"""

from __future__ import annotations

import copy
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from dynvlm.records import Batch, Sample, Turn

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
WORDS = ["what", "colour", "is", "the", "video", "answer", "with", "letter", *COLOURS]
QUESTION = "what colour is the video ?"

ENCODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               image_size=16, patch_size=4)
LLM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
           num_key_value_heads=1, max_position_embeddings=512)


def save_clip(folder: Path) -> str:
    """A random tiny ``CLIPVisionModel`` saved to ``folder``; returns the path."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**ENCODER)).save_pretrained(folder)
    return str(folder)


def save_siglip(folder: Path) -> str:
    """A random tiny ``SiglipVisionModel`` saved to ``folder``; returns the path."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(**ENCODER)).save_pretrained(folder)
    return str(folder)


def save_qwen(folder: Path) -> str:
    """A random tiny ``Qwen2ForCausalLM`` + the in-project word-level tokenizer saved to ``folder``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from dynvlm.plugins.llms.hf import build_word_tokenizer

    tok = build_word_tokenizer(WORDS)
    torch.manual_seed(0)
    cfg = Qwen2Config(**LLM, vocab_size=len(tok), initializer_range=LLM["hidden_size"] ** -0.5,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def write_video(path: Path, rgb: tuple[int, int, int], seconds: int, rate: int = 2, size: int = 24) -> Path:
    """An H.264 mp4 of ``seconds`` seconds at ``rate`` fps filled with ``rgb`` (with a moving dark bar)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.time_base = Fraction(1, rate)
        for i in range(seconds * rate):
            img = np.empty((size, size, 3), np.uint8)
            img[:] = rgb
            img[:, (i * 3) % size : (i * 3) % size + 3] = 20
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def colour_mc_file(folder: Path, n: int = 6, min_seconds: int = 2, spread: int = 2) -> Path:
    """``n`` single-colour clips (``min_seconds + i % spread`` s long) and a dynvlm multiple-choice JSONL over
    them in ``folder``; every third answer key is off by one, so a perfect model scores below 1. Returns the
    JSONL's path (``folder/test_mc.jsonl``)."""
    names = list(COLOURS)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = names[(i + 1) % 3]
        write_video(folder / f"c{i}.mp4", COLOURS[colour], min_seconds + i % spread)
        key = names.index(colour) + (i % 3 == 2)
        rows.append({"question_id": f"q{i}", "video": f"c{i}.mp4", "question": QUESTION, "options": names,
                     "answer": "ABC"[key % 3], "category": "colour"})
    path = folder / "test_mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def colour_samples(folder: Path, n: int, seconds: int = 4, max_frames: int = 16) -> list[Sample]:
    """``n`` decoded videos cycling through the colours, as MC-capable samples (answer = the colour's letter)."""
    from dynvlm.data.video import read_video

    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    out = []
    for i in range(n):
        colour = names[i % len(names)]
        path = write_video(folder / f"{i}.mp4", COLOURS[colour], seconds + i % 2)
        clip = read_video(path, fps=1.0, max_frames=max_frames)
        options = "\n".join(f"{chr(65 + k)}. {c}" for k, c in enumerate(names))
        out.append(Sample(
            frames=torch.from_numpy(np.ascontiguousarray(clip.frames)),
            timestamps=list(clip.timestamps),
            conversation=[Turn("human", f"<video>\n{QUESTION}\n{options}\nanswer with the letter ."),
                          Turn("gpt", chr(65 + i % len(names)))],
            kind="video", id=f"v{i}", source=str(path),
            meta={"options": names, "answer": i % len(names), "category": "colour", "question_id": f"q{i}",
                  "question": QUESTION},
        ))
    return out


class ListDataModule(pl.LightningDataModule):
    """Serves fixed lists of samples as :class:`Batch` objects (train shuffled)."""

    def __init__(self, train: list[Sample], val: list[Sample] | None = None, batch_size: int = 6) -> None:
        super().__init__()
        self.train, self.val, self.batch_size = train, val or train, batch_size

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, collate_fn=Batch)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=self.batch_size, collate_fn=Batch)

    def test_dataloader(self):
        return DataLoader(self.val, batch_size=self.batch_size, collate_fn=Batch)


def inline_model(compressor: str = "pool", **compressor_kw: Any) -> dict[str, Any]:
    """``model`` section with inline (random-init) tiny CLIP and Qwen2."""
    return {
        "encoder": {"name": "clip", "config": dict(ENCODER)},
        "compressor": {"name": compressor, **compressor_kw},
        "llm": {"name": "hf", "config": dict(LLM), "vocabulary": list(WORDS)},
    }


def run_config(out: Path, model: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """A full run config for the tiny model (CPU trainer, a few steps); ``sections`` override top-level keys."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "output_dir": str(out),
        "model": copy.deepcopy(model) if model else inline_model(),
        "budget": {"max_tokens": 64, "min_tokens_per_frame": 1, "max_frames": 16},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "encoder_lr_ratio": 0.2},
        "stage": {"name": "video_sft"},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 4, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 1, "num_sanity_val_steps": 0,
                    "limit_val_batches": 1},
    }
    cfg.update(sections)
    return cfg
