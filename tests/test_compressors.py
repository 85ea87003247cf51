"""Contract every registered compressor must keep, parametrised over the registry."""

import inspect

import pytest
import torch

import dynvlm

NAMES = dynvlm.get_registry().names("compressor")
# the backend tests apply to compressors that offer the auto|triton|torch switch (a third-party
# compressor need not)
WITH_BACKEND = [
    n for n in NAMES if "backend" in inspect.signature(dynvlm.get_registry().get("compressor", n).cls).parameters
]
GRID = (3, 5)  # N = 15: not a square, odd sides
N = GRID[0] * GRID[1]
C = 12


def _build(name, **kw):
    torch.manual_seed(0)
    return dynvlm.build_component("compressor", {"name": name, **kw}, dim=C)


def _x(dtype=torch.float32, frames=2):
    return (torch.randn(frames, N, C, generator=torch.Generator().manual_seed(1)) + 0.2).to(dtype)


def test_first_party_compressors_are_registered():
    assert {"pool", "tome", "prune", "identity", "random", "bilinear"} <= set(NAMES)
    assert {"pool", "tome", "prune"} <= set(WITH_BACKEND)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("grid", [GRID, (2, 8)])  # (2, 8): pool goes past the short side (s=4 > h=2)
def test_every_token_count_is_served(name, grid):
    comp = _build(name).eval()
    n = grid[0] * grid[1]
    x = torch.randn(2, n, C, generator=torch.Generator().manual_seed(1)) + 0.2
    for tokens in range(1, n + 1):
        out = comp(x, grid, tokens)
        m = out.x.shape[1]
        if getattr(comp, "keeps_all", False):  # `identity`: declared to serve N only, whatever is asked
            assert m == n, (tokens, m)
        else:
            assert 1 <= m <= tokens, (tokens, m)
        assert m == comp.achievable(tokens, grid), tokens
        assert out.x.shape == (2, m, C)
        assert out.positions is not None and out.positions.shape == (2, m)
        assert bool((out.positions[:, 1:] >= out.positions[:, :-1]).all()), (
            f"positions not increasing at tokens={tokens}"
        )
        assert bool(((out.positions >= 0) & (out.positions <= n - 1)).all())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_and_device_are_kept(name, dtype):
    comp = _build(name)
    x = _x(dtype)
    for training in (True, False):
        comp.train(training)
        out = comp(x, GRID, 6)
        assert out.x.dtype == dtype and out.x.device == x.device
        assert torch.isfinite(out.x.float()).all()


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_input_and_parameters(name):
    comp = _build(name).train()
    x = _x().requires_grad_()
    out = comp(x, GRID, 5)
    loss = out.x.square().sum()
    if out.aux_loss is not None:
        assert out.aux_loss.dim() == 0
        loss = loss + out.aux_loss
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in comp.named_parameters():
        assert p.grad is not None, f"{name}.{pname} got no gradient"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_in_eval(name):
    comp = _build(name).eval()
    x = _x()
    a, b = comp(x, GRID, 7), comp(x, GRID, 7)
    assert torch.equal(a.x, b.x) and torch.equal(a.positions, b.positions)


@pytest.mark.parametrize("name", WITH_BACKEND)
def test_triton_backend_agrees_with_torch(name):
    # Triton runs under TRITON_INTERPRET=1 here (conftest)
    x = _x()
    ref = _build(name, backend="torch").eval()
    tri = _build(name, backend="triton").eval()
    tri.load_state_dict(ref.state_dict())
    for tokens in (1, 4, 9, N):
        a, b = tri(x, GRID, tokens), ref(x, GRID, tokens)
        torch.testing.assert_close(a.x, b.x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.positions, b.positions)


@pytest.mark.parametrize("name", NAMES)
def test_bad_calls_raise_clear_errors(name):
    comp = _build(name)
    x = _x()
    for bad in (0, N + 1, -3):
        with pytest.raises(ValueError, match=rf"tokens={bad} is outside \[1, N={N}\]"):
            comp(x, GRID, bad)
    with pytest.raises(ValueError, match="tokens must be an int"):
        comp(x, GRID, 2.0)
    with pytest.raises(ValueError, match=r"grid 4x4 holds 16 tokens but x has N=15"):
        comp(x, (4, 4), 4)
    with pytest.raises(ValueError, match=r"expected tokens of shape \[F, N, C\]"):
        comp(x[0], GRID, 4)


@pytest.mark.parametrize("name", WITH_BACKEND)
def test_unknown_backend_is_rejected(name):
    with pytest.raises(ValueError, match="backend must be one of auto, triton, torch"):
        _build(name, backend="cuda")


@pytest.mark.parametrize(
    "name,kw",
    [("tome", {"key": "proj"}), ("tome", {"key": "proj", "key_dim": 5}), ("prune", {"aux_loss": "keep_ratio"}),
     ("prune", {"aux_loss": "entropy", "hidden": 3, "seed": 4})],
)  # fmt: skip
def test_configured_variants_train_every_parameter(name, kw):
    comp = _build(name, **kw).train()
    x = _x().requires_grad_()
    out = comp(x, GRID, 5)
    loss = out.x.square().sum()
    if kw.get("aux_loss"):
        assert out.aux_loss is not None and out.aux_loss.dim() == 0 and out.aux_loss > 0
        loss = loss + out.aux_loss
    loss.backward()
    for pname, p in comp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"
    comp.eval()
    assert comp(x, GRID, 5).aux_loss is None


@pytest.mark.parametrize(
    "name,kw,match",
    [("tome", {"key": "hash"}, "key must be one of"), ("tome", {"key_dim": 4}, "needs key='proj'"),
     ("prune", {"aux_loss": "l1"}, "aux_loss must be one of"), ("prune", {"tau": 0.0}, "tau must be positive")],
)  # fmt: skip
def test_bad_options_raise(name, kw, match):
    with pytest.raises(ValueError, match=match):
        _build(name, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_every_compressor_runs_after_the_projector_unless_it_declares_it_cannot(name):
    """``model.compressor_at: after_projector`` builds the compressor with the LLM's width ``D`` and
    gives it projected tokens ``[F, N, D]``; a compressor that only works on the encoder's tokens
    declares ``needs_encoder_width`` and the model refuses that placement (test_llava_onevision.py)."""
    comp_cls = dynvlm.get_registry().get("compressor", name).cls
    if comp_cls.needs_encoder_width:
        return
    d = C + 8
    torch.manual_seed(0)
    comp = dynvlm.build_component("compressor", {"name": name}, dim=d).eval()
    x = torch.randn(2, N, d, generator=torch.Generator().manual_seed(1)) + 0.2
    for tokens in (1, 4, N):
        out = comp(x, GRID, tokens)
        assert out.x.shape == (2, comp.achievable(tokens, GRID), d)
        assert torch.isfinite(out.x).all()
