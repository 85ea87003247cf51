"""``trainer.strategy`` and ``trainer.precision`` from YAML: FSDP, DDP or DeepSpeed, mixed precision done right.

``trainer.strategy`` may be a plain Lightning name (``ddp``, ``fsdp``, ``auto``: passed on as it is) or a
mapping (:class:`dynvlm.schema.StrategyConfig`)::

    trainer:
      strategy: {name: fsdp, wrap: layers, activation_checkpointing: true, sharding: FULL_SHARD, state_dict: sharded}
      precision: bf16-mixed

What the mapping builds (:func:`make_strategy`):

- ``fsdp``: Lightning's ``FSDPStrategy`` with one FSDP unit per decoder layer and per vision-tower layer
  (``wrap: layers``; the layer classes are the ``_no_split_modules`` the Hugging Face models name, found in
  the built model: :func:`layer_classes`), the given sharding and checkpoint format (``sharded``: one file
  per rank in a folder, nothing gathered on one rank), ``use_orig_params`` (frozen and trainable weights in
  one unit; parameter names kept). Under ``*-mixed`` precision FSDP computes in the half dtype and keeps
  fp32 shards (master weights, gradients and AdamW states fp32; gradients reduced in fp32).
- ``ddp``: Lightning's ``DDPStrategy`` (the same as the plain name).
- ``deepspeed``: Lightning's ``DeepSpeedStrategy`` at ``zero_stage`` with the model's gradient clipping in
  its config (DeepSpeed clips itself); refused naming the package when ``deepspeed`` is not installed.

``activation_checkpointing: true`` (any strategy) recomputes every layer of each Hugging Face model in the
VideoLLM during backward (transformers' non-reentrant gradient checkpointing): only each layer's input is
kept. Parameter names do not change, so checkpoints are the same with and without it.

Mixed precision (:func:`prepare_precision`): under ``*-mixed`` precision every parameter is made fp32 before
training (a recipe may load its encoder and LLM in bf16 to halve loading memory): master weights and AdamW
states in fp32, compute in bf16/fp16 (autocast, or FSDP's ``param_dtype``), and FSDP flattens one dtype.
Under ``*-true`` half precision everything is cast to that dtype. A config that asks for neither is left
exactly as it was built.

**CPU FSDP.** Lightning refuses ``FSDPStrategy`` on a CPU accelerator and torch's FSDP refuses CPU
parameters unless ``device_id`` names the CPU. :class:`CPUFSDPStrategy` is the smallest shim that makes the
same FSDP code run in CPU processes (gloo), for tests and debugging: a subclass (Lightning checks the exact
class) that wraps with ``device_id=cpu``. It is used only when ``trainer.accelerator`` is ``cpu``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from typing import Any

import torch
from pytorch_lightning.strategies import FSDPStrategy
from torch import nn

from dynvlm.config import ConfigError
from dynvlm.model.parallel import MIXED, TRUE_HALF, enable_activation_checkpointing, layer_classes
from dynvlm.schema import StrategyConfig, section

log = logging.getLogger(__name__)



def strategy_config(spec: Any) -> StrategyConfig | None:
    """The :class:`StrategyConfig` of a ``trainer.strategy`` mapping; ``None`` for a name or an object."""
    if isinstance(spec, Mapping):
        return section(StrategyConfig, spec, "trainer.strategy")
    return None


def _precision(trainer_cfg: Mapping[str, Any]) -> str:
    return str(trainer_cfg.get("precision") or "32-true")


def prepare_precision(model: nn.Module, trainer_cfg: Mapping[str, Any]) -> str | None:
    """Make ``model``'s parameter dtypes what ``trainer.precision`` trains with; returns what was done.

    ``*-mixed``: every floating parameter and buffer fp32 (the master weights; compute runs in the half
    dtype). ``*-true``: everything in that half dtype. Otherwise (fp32 precision): nothing, except under
    FSDP, which flattens one dtype per unit: mixed dtypes become fp32 there.
    """
    precision = _precision(trainer_cfg)
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if precision in MIXED:
        target = torch.float32
    elif precision in TRUE_HALF:
        target = TRUE_HALF[precision]
    elif len(dtypes) > 1 and _is_fsdp(trainer_cfg.get("strategy")):
        target = torch.float32
    else:
        return None
    if dtypes == {target}:
        return None
    model.to(target)
    what = f"parameters {', '.join(sorted(str(d).removeprefix('torch.') for d in dtypes))} -> {str(target).removeprefix('torch.')}"
    log.info("precision %s: %s", precision, what)
    return what


def _is_fsdp(spec: Any) -> bool:
    cfg = strategy_config(spec)
    return (cfg is not None and cfg.name == "fsdp") or (isinstance(spec, str) and spec.startswith("fsdp"))


def make_strategy(trainer_cfg: Mapping[str, Any], model: nn.Module | None = None, grad_clip: float | None = None) -> Any:
    """The Lightning strategy ``trainer.strategy`` describes (see the module docstring).

    Args:
        trainer_cfg: the ``trainer`` section (``strategy``, ``precision``, ``accelerator``).
        model: the built VideoLLM: its layer classes become the FSDP units, and activation checkpointing
            is turned on in it when asked for.
        grad_clip: ``optim.grad_clip``, handed to DeepSpeed (which clips inside its own step).

    Returns:
        a ``Strategy`` instance, or ``trainer.strategy`` itself when it is not a mapping.
    """
    spec = trainer_cfg.get("strategy", "auto")
    cfg = strategy_config(spec)
    if cfg is None:
        return spec
    if cfg.activation_checkpointing:
        if model is None or not enable_activation_checkpointing(model):
            raise ConfigError("trainer.strategy.activation_checkpointing: the model holds no Hugging Face model "
                              "with gradient checkpointing to turn on")
    cpu = str(trainer_cfg.get("accelerator") or "auto") == "cpu" or not torch.cuda.is_available()
    if cfg.name == "auto":
        return "auto"
    if cfg.name == "ddp":
        from pytorch_lightning.strategies import DDPStrategy

        return DDPStrategy(process_group_backend=cfg.process_group_backend)
    if cfg.name == "deepspeed":
        return _deepspeed(cfg, grad_clip)
    return _fsdp(cfg, trainer_cfg, model, cpu)


def _fsdp(cfg: StrategyConfig, trainer_cfg: Mapping[str, Any], model: nn.Module | None, cpu: bool) -> Any:
    from torch.distributed.fsdp import MixedPrecision

    kwargs: dict[str, Any] = {"sharding_strategy": cfg.sharding, "state_dict_type": cfg.state_dict,
                              "cpu_offload": cfg.cpu_offload, "process_group_backend": cfg.process_group_backend}
    if cfg.wrap == "layers":
        classes = layer_classes(model) if model is not None else set()
        if not classes:
            raise ConfigError("trainer.strategy.wrap: layers, but the model names no layer classes "
                              "(_no_split_modules of its Hugging Face models); use wrap: none")
        kwargs["auto_wrap_policy"] = classes
    half = MIXED.get(_precision(trainer_cfg))
    if half is not None:
        # compute in the half dtype, reduce gradients and keep shards (master weights, AdamW states) in fp32;
        # buffers (rotary frequencies, normalisation constants) keep their dtype
        kwargs["mixed_precision"] = MixedPrecision(param_dtype=half, reduce_dtype=torch.float32, buffer_dtype=None)
    return (CPUFSDPStrategy if cpu else FSDPStrategy)(**kwargs)


def _deepspeed(cfg: StrategyConfig, grad_clip: float | None) -> Any:
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("trainer.strategy.name: deepspeed needs the deepspeed package, which is not installed "
                          "(pip install deepspeed); fsdp needs nothing more")
    from pytorch_lightning.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(stage=cfg.zero_stage, offload_optimizer=cfg.cpu_offload,
                             offload_parameters=cfg.cpu_offload and cfg.zero_stage == 3,
                             process_group_backend=cfg.process_group_backend,
                             config=None if grad_clip is None else _deepspeed_config(cfg, grad_clip))


def _deepspeed_config(cfg: StrategyConfig, grad_clip: float) -> dict[str, Any]:
    return {"zero_optimization": {"stage": cfg.zero_stage}, "gradient_clipping": float(grad_clip),
            "zero_allow_untested_optimizer": True}


class CPUFSDPStrategy(FSDPStrategy):
    """FSDP in CPU processes (gloo): the shim of the module docstring. Lightning accepts FSDP on a CPU
    accelerator for a subclass only (it checks the exact class); torch's FSDP needs ``device_id=cpu`` for CPU
    parameters, which Lightning never passes (it passes the device index, ``None`` on CPU)."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                        mixed_precision=self.mixed_precision_config,
                                        sharding_strategy=self.sharding_strategy,
                                        device_id=torch.device("cpu"), **self.kwargs)
