"""FSDP on CPU: the real VideoLLM (tiny models) trains in 2 CPU processes (gloo) with the 7B recipe's settings --
encoder and LLM loaded in bf16, ``bf16-mixed`` precision, gradient clipping, weight decay, per-layer FSDP units,
activation checkpointing, the answer-only loss -- its sharded checkpoint resumes to the same state, and every
evaluation entry point (``dynvlm eval``, its default ``last.ckpt``, ``dynvlm test``, a transfer sweep, the lmms-eval loader)
reads the sharded folder as the weights FSDP itself gathers at the end of training.

Lightning refuses FSDP on a CPU accelerator and torch's FSDP refuses CPU parameters without ``device_id=cpu``:
the run uses :class:`dynvlm.run.strategy.CPUFSDPStrategy`, the smallest shim (a subclass, which Lightning's
check lets through, wrapping with ``device_id=cpu``); everything else is the code a GPU run uses.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from tiny_vlm import colour_mc_file, inline_model, run_config

TESTS = Path(__file__).parent

SCRIPT = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch
import pytorch_lightning as pl
from tiny_vlm import ListDataModule, colour_samples, inline_model, run_config
from dynvlm.run.train import fit


class Probe(pl.Callback):
    def __init__(self):
        self.losses, self.start, self.end, self.info = [], None, None, {{}}

    def state(self, trainer, module):
        # this rank's shards: parameters (use_orig_params views) and AdamW moments, as float64 sums
        opt = trainer.optimizers[0]
        params = [p for p in trainer.model.parameters()]
        moments = [s[k] for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq") if k in s]
        return {{"step": trainer.global_step, "params": sum(float(p.detach().double().sum()) for p in params),
                "params_abs": sum(float(p.detach().double().abs().sum()) for p in params),
                "moments": sum(float(m.double().abs().sum()) for m in moments), "n_moments": len(moments)}}

    def on_train_start(self, trainer, module):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        import torch.distributed as dist

        self.start = self.state(trainer, module)
        opt = trainer.optimizers[0]
        self.info = {{
            "strategy": type(trainer.strategy).__name__, "backend": dist.get_backend(),
            "units": sum(isinstance(m, FSDP) for m in trainer.model.modules()),
            "param_dtypes": sorted({{str(p.dtype) for p in trainer.model.parameters()}}),
            "groups": {{g["name"]: [len(g["params"]), g["weight_decay"]] for g in opt.param_groups}},
            "checkpointing": any(getattr(m, "gradient_checkpointing", False) for m in module.modules()),
        }}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        if trainer.global_step >= stop_at:  # the first run stops early: the second resumes the same config
            trainer.should_stop = True

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.info["state_dtypes"] = sorted({{str(s[k].dtype) for s in optimizer.state.values()
                                            for k in ("exp_avg", "exp_avg_sq") if k in s}})

    def on_train_end(self, trainer, module):
        self.end = self.state(trainer, module)
        if phase == "second":
            # the final weights gathered by FSDP itself (not by torch.distributed.checkpoint): what the
            # evaluation of the sharded last.ckpt is compared with. Gathered on every rank, in place:
            # offload_to_cpu of weights already on the CPU crashes the process (SIGSEGV)
            from torch.distributed.fsdp import FullStateDictConfig, StateDictType
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            with FSDP.state_dict_type(trainer.model, StateDictType.FULL_STATE_DICT,
                                      FullStateDictConfig(offload_to_cpu=False, rank0_only=False)):
                full = trainer.model.state_dict()
            if trainer.global_rank == 0:
                torch.save(full, root / "full.pt")


root = Path({root!r})
phase, stop_at = sys.argv[1], int(sys.argv[2])
rank = os.environ.get("LOCAL_RANK", "0")
samples = colour_samples(root / f"videos{{rank}}", 4, seconds=2, max_frames=4)
model = inline_model()
model["encoder"]["dtype"] = model["llm"]["dtype"] = "bfloat16"  # the recipe loads both in bf16
strategy = {{"name": "fsdp", "wrap": "layers", "activation_checkpointing": True, "state_dict": "sharded"}}
trainer = {{"accelerator": "cpu", "devices": 2, "strategy": strategy, "precision": "bf16-mixed", "max_steps": 8,
           "enable_progress_bar": False, "enable_model_summary": False, "logger": False, "limit_val_batches": 0,
           "num_sanity_val_steps": 0}}
optim = {{"lr": 3e-3, "warmup_steps": 0, "weight_decay": 0.01, "grad_clip": 1.0, "answer_only_loss": True}}
probe = Probe()
result = fit(run_config(root / "runs", model=model, trainer=trainer, optim=optim), ListDataModule(samples, batch_size=2),
             callbacks=[probe])
out = {{**result, "losses": probe.losses, "start": probe.start, "end": probe.end, **probe.info}}
(root / f"{{phase}}{{rank}}.json").write_text(json.dumps(out))
"""


def _run(tmp_path: Path, phase: str, steps: int) -> list[dict]:
    proc = subprocess.run([sys.executable, str(tmp_path / "fsdp_fit.py"), phase, str(steps)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((tmp_path / f"{phase}{r}.json").read_text()) for r in (0, 1)]


def test_fsdp_trains_and_resumes_from_a_sharded_checkpoint_in_two_cpu_processes(tmp_path):
    (tmp_path / "fsdp_fit.py").write_text(textwrap.dedent(SCRIPT.format(tests=str(TESTS), root=str(tmp_path))))
    first = _run(tmp_path, "first", 6)
    for r in first:
        assert r["strategy"] == "CPUFSDPStrategy" and r["backend"] == "gloo" and r["world_size"] == 2
        assert r["units"] == 1 + 1 + 1  # the root + the decoder layer + the ViT layer (select_layer -2 keeps 1 of 2)
        assert r["param_dtypes"] == ["torch.float32"]  # fp32 master shards, though both models loaded in bf16
        assert r["state_dtypes"] == ["torch.float32"]  # AdamW moments in fp32
        assert r["checkpointing"]
        # weight decay by role: FSDP's flat 1-D shards still decay (a shape rule would put all in no_decay)
        assert r["groups"]["main"][1] == 0.01 and r["groups"]["main"][0] > 0
        assert r["groups"]["main/no_decay"][1] == 0.0 and r["groups"]["encoder"][1] == 0.01
        assert r["global_step"] == 6 and len(r["losses"]) == 6
        assert all(x == x and x < 100 for x in r["losses"])  # finite: clipping ran under FSDP
    mean = [sum(r["losses"][i] for r in first) / 2 for i in range(6)]
    assert sum(mean[-2:]) / 2 < mean[0], mean  # the loss falls

    last = tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / "meta.pt").is_file() and (last / ".metadata").is_file()
    assert len(list(last.glob("*.distcp"))) == 2  # one shard file per rank

    second = _run(tmp_path, "second", 99)
    for a, b in zip(first, second):
        assert b["resumed_from"] == str(last)
        assert b["start"]["step"] == 6 and b["global_step"] == 8
        # each rank's shards of weights and AdamW moments are where the first run left them
        assert b["start"]["n_moments"] == a["end"]["n_moments"] > 0
        for key in ("params", "params_abs", "moments"):
            assert abs(b["start"][key] - a["end"][key]) <= 1e-9 * max(1.0, abs(a["end"][key])), key

    # the next stage reads the sharded folder's weights without a process group (stage.resume_from)
    from dynvlm.model.checkpoint import read_weights

    weights = read_weights(last)
    assert "projector.net.0.weight" in weights and weights["projector.net.0.weight"].dtype == torch.float32

    _evaluations_read_the_sharded_folder(tmp_path, last)


def _predictions(folder: Path) -> list[tuple]:
    return [(r["question_id"], r["text"], r["pred"], r["letter"])
            for r in map(json.loads, (folder / "predictions.jsonl").read_text().splitlines())]


def _evaluations_read_the_sharded_folder(tmp_path: Path, last: Path) -> None:
    """``dynvlm eval --checkpoint <folder>``, the default ``last.ckpt`` folder, ``dynvlm test``, a transfer sweep
    and the lmms-eval loader give what a single-file copy of the weights FSDP gathered at the end of training gives."""
    from omegaconf import OmegaConf

    from dynvlm.cli.main import main
    from dynvlm.evaluation.command import evaluate_cli
    from dynvlm.lmms.loading import load_checkpoint
    from dynvlm.model.checkpoint import read_checkpoint

    # the assembled folder holds exactly the weights FSDP gathered (all of them: FSDP shards every weight)
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    ckpt = read_checkpoint(last)
    assert set(ckpt["state_dict"]) == set(full) and ckpt["dynvlm"]["trainable"]
    for key, value in full.items():
        assert ckpt["state_dict"][key].dtype == value.dtype and torch.equal(ckpt["state_dict"][key], value), key
    # a consolidated single-file copy: the folder's meta.pt with those weights (no dynvlm reader involved)
    consolidated = tmp_path / "consolidated.ckpt"
    torch.save({**torch.load(last / "meta.pt", weights_only=True), "state_dict": full}, consolidated)

    # evaluated on one device in fp32, the dtype of the shards (FSDP's fp32 master weights): every weight
    # is loaded exactly
    trainer = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
               "logger": False}
    # generated answers: text depends on the weights more finely than the likeliest letter does
    cfg = OmegaConf.create(run_config(tmp_path / "runs", model=inline_model(), trainer=trainer,
                                      data={"test": str(colour_mc_file(tmp_path / "mc"))},
                                      eval={"mode": "generate", "max_new_tokens": 6}))
    sharded = evaluate_cli(cfg, checkpoint=str(last), out=str(tmp_path / "eval_folder"))
    single = evaluate_cli(cfg, checkpoint=str(consolidated), out=str(tmp_path / "eval_file"))
    assert sharded["checkpoint"] == str(last) and sharded["setting"] == single["setting"]
    assert sharded["questions"] == 6 and sharded["accuracy"] == single["accuracy"]
    assert _predictions(tmp_path / "eval_folder") == _predictions(tmp_path / "eval_file")
    # ... which are the trained weights' answers, not the untrained ones'
    untrained = evaluate_cli(OmegaConf.merge(cfg, {"name": "untrained"}), out=str(tmp_path / "eval_untrained"))
    assert untrained["trained_with"] is None
    assert _predictions(tmp_path / "eval_untrained") != _predictions(tmp_path / "eval_file")

    # the command line, without --checkpoint: the run's last.ckpt, a folder
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    assert main(["eval", str(path), "--out", str(tmp_path / "eval_default")]) == 0
    assert json.loads((tmp_path / "eval_default" / "eval.json").read_text())["checkpoint"] == str(last)
    assert _predictions(tmp_path / "eval_default") == _predictions(tmp_path / "eval_file")

    # dynvlm test: Lightning's loading reads only files (outside FSDP), so the folder's weights are loaded for it
    from dynvlm.run import train

    tested = train.test(cfg, checkpoint=str(last), predictions=tmp_path / "test" / "predictions.jsonl")
    assert tested["checkpoint"] == str(last) and tested["test/acc"] == pytest.approx(single["accuracy"])
    assert _predictions(tmp_path / "test") == _predictions(tmp_path / "eval_file")

    # a transfer sweep of the run's last.ckpt folder
    result = evaluate_cli(OmegaConf.merge(cfg, {"sweep": {"model.compressor.name": ["pool"]}}),
                          out=str(tmp_path / "transfer"))
    assert result["checkpoint"] == str(last) and result["points"] == 1
    (point,) = (tmp_path / "transfer" / "points").iterdir()
    assert _predictions(point) == _predictions(tmp_path / "eval_file")

    # the lmms-eval bridge: the folder's own saved config rebuilds the model with the gathered weights
    served = load_checkpoint(last).state_dict()
    for key in ("projector.net.0.weight", "llm.model.lm_head.weight"):
        torch.testing.assert_close(served[key], full[key].to(served[key].dtype), rtol=0, atol=0)
