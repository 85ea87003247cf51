"""Every Triton kernel variant the dispatchers can launch compiles ahead of time to a cubin for
sm_80 and sm_90 with Triton's bundled ptxas (no GPU needed), without register spills.

The variants are the dispatchers' own (:func:`dynvlm.kernels.aot.all_variants`: each kernel
module's ``gpu_variants()``, built by the function its launcher calls), so a new block size or
dtype a dispatcher can choose is compiled here without editing this file. The register/spill
table is printed (``pytest -rP tests/test_kernels_compile.py`` shows it; ``python -m
dynvlm.kernels.aot`` prints the same table).
"""

import sys

from dynvlm.kernels import _rows, aot, pool, prune, ties, tome

# (kernel, constexprs as aot prints them, arch) -> why that variant may spill. Empty: nothing
# spills. An entry must say why the spill is accepted; an entry that no longer spills fails
# the test, so the list never outlives its reason.
SPILLS_ALLOWED: dict[tuple[str, str, int], str] = {}


def test_every_kernel_has_variants():
    # a new @triton.jit kernel that no gpu_variants() lists would never be compiled here
    kernels = {
        f"{m.__name__.rsplit('.', 1)[1]}.{name}"
        for m in (_rows, pool, prune, ties, tome)
        for name in dir(m)
        if name.endswith("_kernel") and hasattr(getattr(m, name), "fn")
    }
    assert kernels == {v.kernel for v in aot.all_variants()}
    assert len(kernels) == 8


def test_every_variant_compiles_for_sm80_and_sm90_without_spills():
    variants = aot.all_variants()
    rows = aot.compile_all(aot.ARCHS, jobs=2)  # two worker processes: the CI machine has 2 cores
    print(aot.table(rows), file=sys.stderr)
    print(f"{len(rows)} compiled in {sum(c.seconds for c in rows):.0f} s of compile time", file=sys.stderr)
    # every (variant, arch) exactly once, and nothing else
    got = [(c.kernel, c.constexprs, c.pointers, c.arch) for c in rows]
    want = [(v.kernel, *aot._describe(v), a) for v in variants for a in aot.ARCHS]
    assert sorted(got) == sorted(want) and len(set(got)) == len(got)
    assert all(0 < c.registers <= 255 for c in rows)
    spilled = [c for c in rows if c.spills and (c.kernel, c.constexprs, c.arch) not in SPILLS_ALLOWED]
    assert not spilled, "register spills:\n" + aot.table(spilled)
    no_longer = set(SPILLS_ALLOWED) - {(c.kernel, c.constexprs, c.arch) for c in rows if c.spills}
    assert not no_longer, f"listed as spilling but no longer do (remove them): {sorted(no_longer)}"
