"""`make setup` built horovod with what the workloads need."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_horovodrun_check_build_lists_pytorch_and_gloo() -> None:
    horovodrun = Path(sys.executable).parent / "horovodrun"
    assert horovodrun.exists(), "horovodrun is missing: run `make setup`"
    out = subprocess.run([str(horovodrun), "--check-build"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    frameworks = out.split("Available Frameworks:")[1].split("Available Controllers:")[0]
    controllers = out.split("Available Controllers:")[1].split("Available Tensor Operations:")[0]
    assert "[X] PyTorch" in frameworks, out
    assert "[X] Gloo" in controllers, out


def test_horovod_torch_runs_two_gloo_workers(tmp_path: Path) -> None:
    script = tmp_path / "allreduce.py"
    script.write_text(
        "import torch, horovod.torch as hvd\nhvd.init()\n"
        "t = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum)\n"
        "print(f'rank {hvd.rank()} of {hvd.size()}: {t.item():.0f}', flush=True)\n"
    )
    horovodrun = Path(sys.executable).parent / "horovodrun"
    proc = subprocess.run([str(horovodrun), "-np", "2", "-H", "localhost:2", "--gloo",
                           sys.executable, str(script)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "of 2: 3" in proc.stdout


def _dry_run(tmp_path: Path, target: str) -> str:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(["make", "-n", "-C", str(repo), target, f"VENV={tmp_path / 'venv'}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_test_and_make_run_install_what_is_missing_first(tmp_path: Path) -> None:
    for target, last in (("test", "-m pytest"), ("run", "bin/llmconsole")):
        fresh = _dry_run(tmp_path, target)
        assert "-m venv" in fresh and "horovod==" in fresh and "pip install" in fresh, fresh
        assert fresh.index("-m venv") < fresh.index(last), fresh
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / ".llmconsole-installed").touch()  # newer than Makefile, pyproject
    installed = _dry_run(tmp_path, "test")
    assert "-m venv" not in installed and "-m pytest" in installed, installed
