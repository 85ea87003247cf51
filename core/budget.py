"""The visual-token budget: how many frames a sample keeps and how many tokens each frame gets.

A **budget policy** is a plugin (kind ``budget``, hook ``register_budgets``) chosen by
``budget.policy``. It sees, per sample, a :class:`VideoInfo` (the timestamps of the frames the
data side decoded, the video's duration, optionally the decoded pixels) and, per run, a
:class:`Budget` (the ``budget`` config, the encoder grid and the compressor's exact counts),
and returns a :class:`FramePlan`: the indices of the frames to keep and the tokens per frame.

Built-in policies (``dynvlm.plugins.budgets``):

- ``dynamic`` (default), Dynamic-VLM's rule: ``M = clamp(N_max // T, m_min, N)``, so short
  videos get many tokens per frame and long videos many frames. (The seed text writes
  ``max(N_max / T, 576)``; the paper means a clamp.) Training draws ``M`` at random per batch.
  ``budget.tokens_per_frame`` set fixes ``M`` (frames then drop to ``N_max // M``).
- ``fixed``: ``M`` given, ``N_max // M`` frames.
- ``frames``: ``T`` given, ``M = N_max // T``.
- ``keyframes``: the dynamic rule's ``T`` and ``M``, with the ``T`` frames taken where
  consecutive decoded frames differ most (it reads :attr:`VideoInfo.frames`).

Where frames come from: the data side decodes every video at ``budget.fps`` (1 fps = the
paper's timestamps) up to ``budget.max_frames`` (uniform thinning beyond it, see
:func:`dynvlm.data.video.read_video`); a policy picks among those decoded frames. A policy that
needs pixels (``keyframes``) therefore gets the decoded frames themselves, at no extra decode.

Every plan is made exact with ``compressor.achievable(M, grid)`` (e.g. an ``a x b`` grid for
pooling), which never rounds up, and checked by :class:`BudgetPolicy`: indices strictly
increasing and in range, tokens an exact count, total visual tokens ``<= N_max``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dynvlm.schema import BudgetConfig, section

if TYPE_CHECKING:  # pragma: no cover - torch is imported by whoever passes pixels
    from torch import Tensor

    from dynvlm.records import Sample
    from dynvlm.registry import Registry

__all__ = [
    "Budget",
    "BudgetPolicy",
    "FramePlan",
    "Policy",
    "VideoInfo",
    "budget_config",
    "policy_spec",
    "thin_to_budget",
    "tokens_per_frame",
    "uniform_indices",
]


def tokens_per_frame(frames: int, max_tokens: int, min_tokens: int, tokens: int) -> int:
    """``clamp(max_tokens // frames, min_tokens, tokens)``: the dynamic tokens per frame for ``frames`` frames.

    Args:
        frames: ``T``, frames of the sample (``>= 1``).
        max_tokens: ``N_max``, total visual tokens per sample.
        min_tokens: ``m_min``, the floor per frame.
        tokens: ``N``, tokens per frame the encoder produces (the ceiling).
    """
    if frames < 1:
        raise ValueError(f"budget: a sample needs at least one frame, got T={frames}")
    return max(min_tokens, min(max_tokens // frames, tokens))


def uniform_indices(total: int, keep: int) -> list[int]:
    """``keep`` indices spread over ``range(total)`` by truncated ``linspace`` (first and last kept),
    the rule the common evaluation harnesses use; all of them if ``keep >= total``.

    The one implementation of frame thinning: the video reader's ``max_frames`` cap, the budget's
    ``N_max // M`` cap and the synthetic accuracy ceilings all call it, so they agree frame for frame.
    """
    if keep >= total:
        return list(range(total))
    # np.linspace's float steps, not exact division: the harnesses' indices differ in places
    return [int(i) for i in np.linspace(0, total - 1, keep).astype(int)]


@dataclass(frozen=True)
class FramePlan:
    """What one sample feeds the model: the ``indices`` of its frames to keep and ``tokens`` per frame."""

    indices: tuple[int, ...]
    tokens: int

    @property
    def visual_tokens(self) -> int:
        """``len(indices) * tokens``: the visual tokens this plan puts into the prompt."""
        return len(self.indices) * self.tokens


@dataclass(frozen=True, eq=False)
class VideoInfo:
    """What a policy knows about one sample's video.

    Attributes:
        timestamps: ``T`` strictly increasing times in seconds of the decoded frames a plan picks from.
        duration: the video's length in seconds (``None`` when unknown; ``0.0`` for images).
        fps: the source's native frame rate (``None`` when unknown).
        frames: the decoded frames, uint8 ``[T, H, W, 3]`` (``None`` when only counts are planned;
            policies that need pixels raise then).
    """

    timestamps: tuple[float, ...]
    duration: float | None = None
    fps: float | None = None
    frames: Tensor | None = None

    def __post_init__(self) -> None:
        if not self.timestamps:
            raise ValueError("budget: a sample needs at least one frame, got no timestamps")
        if self.frames is not None and self.frames.shape[0] != len(self.timestamps):
            raise ValueError(f"budget: {len(self.timestamps)} timestamps for {self.frames.shape[0]} frames")

    @property
    def count(self) -> int:
        """``T``: how many decoded frames there are to choose from."""
        return len(self.timestamps)

    @classmethod
    def from_count(cls, frames: int, fps: float = 1.0) -> VideoInfo:
        """``frames`` frames at ``k / fps`` seconds (1 fps for ``fps <= 0``, the reader's "every
        frame"), no pixels: for planning by count alone."""
        if frames < 1:
            raise ValueError(f"budget: a sample needs at least one frame, got T={frames}")
        fps = fps if fps and fps > 0 else 1.0
        return cls(tuple(k / fps for k in range(int(frames))), duration=frames / fps)

    @classmethod
    def from_sample(cls, sample: Sample) -> VideoInfo:
        """A :class:`~dynvlm.records.Sample`'s timestamps, ``meta["duration"]`` and frames ``[T, H, W, 3]``."""
        duration = sample.meta.get("duration")
        return cls(tuple(float(t) for t in sample.timestamps),
                   duration=None if duration is None else float(duration),
                   fps=sample.meta.get("native_fps"), frames=sample.frames)


@dataclass(frozen=True)
class Budget:
    """The run's budget as a policy sees it (rebuilt per call: the config or compressor may change).

    Attributes:
        cfg: the ``budget`` section (``max_tokens`` = ``N_max``, ``min_tokens_per_frame`` = ``m_min``, ...).
        grid: ``(h, w)`` encoder grid, ``N = h * w``.
        exact: ``tokens -> the exact count the compressor gives`` (its ``achievable`` on this grid).
    """

    cfg: BudgetConfig
    grid: tuple[int, int]
    exact: Callable[[int], int]

    @property
    def n(self) -> int:
        """``N``: tokens per frame the encoder produces."""
        return self.grid[0] * self.grid[1]

    @property
    def max_tokens(self) -> int:
        """``N_max``: total visual tokens per sample."""
        return self.cfg.max_tokens

    def achievable(self, tokens: int) -> int:
        """The exact count the compressor gives for ``tokens`` (requests are clipped to ``[1, N]`` first)."""
        return int(self.exact(max(1, min(int(tokens), self.n))))


def thin_to_budget(indices: Sequence[int], tokens: int, max_tokens: int) -> tuple[int, ...]:
    """``indices`` thinned uniformly (first and last kept) so that ``len * tokens <= max_tokens``.

    Needed when a compressor gives more tokens than asked (``identity`` always keeps ``N``):
    the frame count, not the budget, gives way. At least one frame is always kept.
    """
    keep = max(1, max_tokens // max(1, tokens))
    if keep >= len(indices):
        return tuple(indices)
    return tuple(indices[i] for i in uniform_indices(len(indices), keep))


class Policy:
    """Base class of budget policies (plugin kind ``budget``).

    Subclasses take their own keyword arguments from the ``budget.policy`` mapping (checked
    against the ``__init__`` signature) and implement :meth:`plan`; the run's budget arrives
    per call as a :class:`Budget`, so a policy holds no run state.
    """

    def __init__(self) -> None:
        """No keys: a policy with keys declares them here (the config lists them as valid)."""

    def check(self, budget: Budget) -> None:
        """Raise ``ValueError`` naming the key when this policy cannot serve ``budget`` (called once, at build)."""

    def plan(self, video: VideoInfo, budget: Budget) -> FramePlan:  # pragma: no cover - abstract
        """The deterministic (evaluation) plan of one sample: frame indices into ``video.timestamps``
        (strictly increasing) and exact tokens per frame, ``len(indices) * tokens <= budget.max_tokens``."""
        raise NotImplementedError

    def plan_batch(self, videos: Sequence[VideoInfo], budget: Budget, training: bool = False,
                   rng: random.Random | None = None) -> list[FramePlan]:
        """Plans of a batch. The default plans each sample on its own, the same in training;
        policies that randomise training (``dynamic``) override it."""
        return [self.plan(v, budget) for v in videos]


def budget_config(budget: BudgetConfig | Mapping[str, Any] | None) -> BudgetConfig:
    """A :class:`BudgetConfig` from a dataclass, a mapping (e.g. a ``DictConfig`` section) or ``None``."""
    return section(BudgetConfig, budget, "budget")


def policy_spec(policy: str | Mapping[str, Any]) -> dict[str, Any]:
    """``budget.policy`` as a component spec ``{name, **keys}``: a bare name or a mapping with ``name``."""
    if isinstance(policy, str):
        return {"name": policy}
    if isinstance(policy, Mapping) and isinstance(policy.get("name"), str):
        return dict(policy)
    raise ValueError(f"budget.policy: expected a policy name or a mapping with a 'name' key, got {policy!r}")


class BudgetPolicy:
    """The run's budget: the configured policy (``budget.policy``) bound to the encoder grid and compressor.

    Args:
        budget: the ``budget`` config section.
        grid: ``(h, w)`` encoder grid, ``N = h * w``.
        achievable: ``compressor.achievable`` (``(tokens, grid) -> exact count``), looked up on
            each call; default serves every count.
        registry: where policies are looked up (default: the entry-point registry).

    ``cfg`` is read at every plan, so changing it between batches (e.g. ``cfg.tokens_per_frame``)
    takes effect.
    """

    def __init__(self, budget: BudgetConfig | Mapping[str, Any] | None, grid: tuple[int, int],
                 achievable: Callable[[int, tuple[int, int]], int] | None = None,
                 registry: Registry | None = None) -> None:
        from dynvlm.config import ConfigError, build_component  # config pulls in omegaconf: only when a budget is built

        self.cfg = budget_config(budget)
        self.grid = (int(grid[0]), int(grid[1]))
        self.n = self.grid[0] * self.grid[1]
        self._achievable = achievable or (lambda m, g: max(1, min(int(m), g[0] * g[1])))
        c = self.cfg
        if c.max_tokens < 1:
            raise ValueError(f"budget.max_tokens must be >= 1, got {c.max_tokens}")
        if not 1 <= c.min_tokens_per_frame <= self.n:
            raise ValueError(f"budget.min_tokens_per_frame={c.min_tokens_per_frame} must be in [1, N={self.n}] "
                             f"(the encoder grid {self.grid[0]}x{self.grid[1]})")
        if c.min_tokens_per_frame > c.max_tokens:
            raise ValueError(f"budget.min_tokens_per_frame={c.min_tokens_per_frame} exceeds "
                             f"budget.max_tokens={c.max_tokens}")
        if c.tokens_per_frame is not None and not 1 <= c.tokens_per_frame <= c.max_tokens:
            raise ValueError(f"budget.tokens_per_frame={c.tokens_per_frame} must be in [1, max_tokens={c.max_tokens}]")
        if c.max_frames < 1:
            raise ValueError(f"budget.max_frames must be >= 1, got {c.max_frames}")
        spec = policy_spec(c.policy)
        self.name: str = spec["name"]
        try:
            self.policy: Policy = build_component("budget", spec, registry)
        except ConfigError as exc:  # name the config key the spec came from
            raise ConfigError(f"budget.policy: {exc}") from None
        if not isinstance(self.policy, Policy):  # else the first plan() fails with a bare AttributeError
            prov = getattr(self.policy, "provenance", None) or {}
            raise ConfigError(f"budget.policy: plugin {self.name!r} (distribution "
                              f"{prov.get('distribution', '?')}=={prov.get('version', '?')}) registered "
                              f"{type(self.policy).__qualname__}, which is not a dynvlm.budget.Policy subclass")
        self.policy.check(self.context())

    def achievable(self, tokens: int) -> int:
        """The exact count the compressor gives for ``tokens`` (never more, except compressors that keep all)."""
        return self.context().achievable(tokens)

    def context(self) -> Budget:
        """The :class:`Budget` policies plan with: the current config, grid and compressor counts."""
        return Budget(self.cfg, self.grid, lambda m: int(self._achievable(int(m), self.grid)))

    def plan(self, video: int | VideoInfo) -> FramePlan:
        """Deterministic (evaluation) plan of one sample, given as a :class:`VideoInfo` or a frame count."""
        return self.plan_batch([video])[0]

    def plan_images(self, count: int) -> FramePlan:
        """The plan of a question about ``count`` images (a ``kind="images"`` sample): every image kept.

        ``M = achievable(clamp(N_max // T, m_min, N))`` (``budget.tokens_per_frame`` when fixed), then
        lowered while ``T * M > N_max`` (to 1 at least); no image is ever dropped: a question refers
        to its images by position. The policy is not asked (its frame choice is for videos).

        Args:
            count: ``T``, the question's images.

        Returns:
            ``FramePlan((0, ..., T - 1), M)``.

        Raises:
            ValueError: ``T`` images do not fit ``N_max`` even at one token each, naming both.
        """
        cfg = self.cfg
        if count > cfg.max_tokens:
            raise ValueError(f"{count} images need at least {count} visual tokens, more than budget.max_tokens="
                             f"{cfg.max_tokens}: raise budget.max_tokens")
        wanted = cfg.tokens_per_frame or tokens_per_frame(count, cfg.max_tokens, cfg.min_tokens_per_frame, self.n)
        m = self.achievable(min(wanted, cfg.max_tokens // count))
        while m > 1 and count * m > cfg.max_tokens:
            m = self.achievable(m - 1)
        return FramePlan(tuple(range(count)), m)

    def plan_batch(self, videos: Sequence[int | VideoInfo], training: bool = False,
                   rng: random.Random | None = None) -> list[FramePlan]:
        """Plans for a batch (frame counts are planned as frames at ``k / budget.fps`` without pixels).

        Raises ``RuntimeError`` naming the policy when a plan breaks the contract: indices not
        strictly increasing or out of range, tokens not an exact count, or more than ``N_max``
        visual tokens.
        """
        infos = [v if isinstance(v, VideoInfo) else VideoInfo.from_count(int(v), self.cfg.fps) for v in videos]
        budget = self.context()
        plans = self.policy.plan_batch(infos, budget, training=training, rng=rng)
        if len(plans) != len(infos):
            raise RuntimeError(f"budget policy {self.name!r} returned {len(plans)} plans for {len(infos)} samples")
        for info, p in zip(infos, plans):
            self._check_plan(info, p, budget)
        return plans

    def _check_plan(self, info: VideoInfo, plan: FramePlan, budget: Budget) -> None:
        where = f"budget policy {self.name!r}"
        idx = list(plan.indices)
        if not idx or any(b <= a for a, b in zip(idx, idx[1:])) or idx[0] < 0 or idx[-1] >= info.count:
            raise RuntimeError(f"{where} planned frame indices {idx[:8]}{'...' if len(idx) > 8 else ''} for "
                               f"{info.count} frames: they must be strictly increasing and in range")
        if plan.tokens < 1 or budget.achievable(plan.tokens) != plan.tokens:
            raise RuntimeError(f"{where} planned {plan.tokens} tokens per frame, which the compressor does not give "
                               f"exactly on grid {self.grid[0]}x{self.grid[1]} (it gives "
                               f"{budget.achievable(plan.tokens)}): plan with budget.achievable")
        if plan.visual_tokens > budget.max_tokens:
            raise RuntimeError(f"{where} planned {len(idx)} frames x {plan.tokens} tokens = {plan.visual_tokens} "
                               f"visual tokens, more than budget.max_tokens={budget.max_tokens}")
