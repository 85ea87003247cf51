"""The prepared GPU check (dynvlm.kernels.gpu_check): refuses without CUDA, and its checks pass
when pointed at the interpreter with tiny sizes (so the script itself is known to work)."""

import torch

from dynvlm.kernels import gpu_check


def test_refuses_to_run_without_compiled_kernels(capsys):
    # CI: no CUDA. On a GPU box the test session sets TRITON_INTERPRET=1 (conftest), also refused.
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err
    assert ("TRITON_INTERPRET is set" if torch.cuda.is_available() else "no CUDA device") in err


def test_checks_pass_under_the_interpreter(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "SIZES", ((1, 36, 20, 5),))
    monkeypatch.setattr(gpu_check, "TIE_SIZE", (1, 40, 16))
    assert gpu_check.run(torch.device("cpu"))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 * 3 * 2 + 1 and all(line.startswith("PASS") for line in lines)
