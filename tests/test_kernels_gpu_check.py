"""The prepared GPU check (dynvlm.kernels.gpu_check): refuses without CUDA, and its checks pass
when pointed at the interpreter with tiny sizes (so the script itself is known to work), launching
every kernel variant the ahead-of-time compile test compiles."""

import torch

from dynvlm.kernels import gpu_check
from dynvlm.kernels._backend import record_variants
from dynvlm.kernels.aot import all_variants


def test_refuses_to_run_without_compiled_kernels(capsys):
    # CI: no CUDA. On a GPU box the test session sets TRITON_INTERPRET=1 (conftest), also refused.
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err
    assert ("TRITON_INTERPRET is set" if torch.cuda.is_available() else "no CUDA device") in err


def test_checks_pass_under_the_interpreter_and_launch_every_variant(monkeypatch, capsys):
    # the realistic sizes shrink (the interpreter is slow); the per-variant calls run as on a GPU.
    # Under the interpreter the kernels run larger blocks, but each launch records the variant
    # (GPU blocks, pointer dtypes) a GPU would run for it
    monkeypatch.setattr(gpu_check, "SIZES", ((1, 36, 20, 5),))
    monkeypatch.setattr(gpu_check, "TIE_SIZE", (1, 40, 16))
    monkeypatch.setattr(gpu_check, "PLAN_SIZES", ((2, 577, 288), (3, 47, 1)))
    with record_variants() as launched:
        assert gpu_check.run(torch.device("cpu"))
    assert launched == set(all_variants())
    lines = capsys.readouterr().out.splitlines()
    n_cases = len(gpu_check.coverage_cases())
    assert len(lines) == 3 * 3 * 2 + 2 * n_cases + 2 + 2 and all(line.startswith("PASS") for line in lines)
    assert "PASS tome plan 2x577 r=288: equals plan_round bitwise" in "\n".join(lines)
    assert lines[-1] == f"PASS launched {len(launched)} of {len(launched)} kernel variants"


def test_coverage_reports_a_variant_it_did_not_launch(monkeypatch, capsys):
    # keep only the tome calls: the pool and prune variants must be reported missing, and the run fail
    cases = [c for c in gpu_check.coverage_cases() if c[0] == "tome"]
    monkeypatch.setattr(gpu_check, "coverage_cases", lambda: cases)
    monkeypatch.setattr(gpu_check, "SIZES", ())
    monkeypatch.setattr(gpu_check, "TIE_SIZE", (1, 40, 16))
    monkeypatch.setattr(gpu_check, "PLAN_SIZES", ())
    assert not gpu_check.run(torch.device("cpu"))
    out = capsys.readouterr().out
    assert "FAIL launched" in out and "not launched: pool._pool_fwd_kernel" in out
    assert "not launched: prune._prune_kernel" in out and "not launched: tome." not in out
