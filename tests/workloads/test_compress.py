"""The compression program, run as the subprocess it is, on the micro model
the session trains once: pruning really zeroes weights in the saved model,
int8 and fp16 really shrink it, distillation trains a student, and a bad
model folder is one line on stderr and exit code 2."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from tests.workloads.conftest import results, run_workload

#: Small held-out measurement: the corpus and split the fixture trained on.
MEASURE = ["--max-docs", "400", "--block-size", "64", "--eval-batches", "4",
           "--latency-repeats", "3"]
SIDES = ("size_bytes", "folder_bytes", "linear_weight_bytes", "parameters",
         "nonzero_parameters", "sparsity", "latency_ms", "latency_p90_ms", "tokens_per_s",
         "eval_loss", "perplexity")


def compress(trained: Path, out: Path, env: dict[str, str], *args: str) -> dict:
    proc = run_workload("compress", ["--model", str(trained), "--output", str(out),
                                     *MEASURE, *args], env)
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    r = results(out)
    assert r["kind"] == "compress" and r["status"] == "ok"
    assert r["source"] == str((trained / "model").resolve())
    for side in ("before", "after"):
        missing = [k for k in SIDES if k not in r[side]]
        assert not missing, (side, missing)
        assert math.isfinite(r[side]["perplexity"]) and r[side]["latency_ms"] > 0
    for key in ("size_ratio", "linear_size_ratio", "speedup", "perplexity_change"):
        assert isinstance(r[key], float), key
    assert (out / "model" / "config.json").is_file()
    assert (out / "metrics.jsonl").read_text().strip()
    return r


def test_prune_zeroes_half_of_the_pruned_weights_in_the_saved_model(
        trained: Path, wl_env: dict[str, str], tmp_path: Path) -> None:
    import torch

    from engine.workloads.models import load_model

    out = tmp_path / "prune"
    r = compress(trained, out, wl_env, "--method", "prune", "--sparsity", "0.5",
                 "--recover-steps", "2")
    assert r["method"] == "prune" and r["format"] == "fp32"
    assert abs(r["pruned_layers_sparsity"] - 0.5) < 0.01
    assert abs(r["after"]["sparsity"] - 0.5) < 0.01 and r["before"]["sparsity"] < 0.01
    assert r["after"]["nonzero_parameters"] < r["before"]["nonzero_parameters"]
    for key in ("perplexity_after_pruning", "perplexity_after_recovery"):
        assert math.isfinite(r[key]), key
    assert r["perplexity_after_recovery"] == r["after"]["perplexity"]

    model = load_model(out).model  # from disk: the zeros were saved
    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            w = module.weight
            if name == "lm_head":
                assert int((w == 0).sum()) < 0.01 * w.numel()  # left alone by default
                continue
            zeros += int((w == 0).sum())
            total += w.numel()
    assert total == r["pruned_parameters"] and abs(zeros / total - 0.5) < 0.01
    assert not any("weight_orig" in k or "weight_mask" in k for k in model.state_dict())


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # torch.load of int8 weights
def test_int8_shrinks_the_linear_weights_and_reloads(
        trained: Path, wl_env: dict[str, str], tmp_path: Path) -> None:
    import torch

    from engine.workloads.models import load_model

    out = tmp_path / "int8"
    r = compress(trained, out, wl_env, "--method", "int8")
    assert r["format"] == "int8-fused" and r["after"]["dtype"] == "int8"
    assert r["linear_size_ratio"] >= 3
    quantized = (out / "model" / "quantized.pt").stat().st_size
    fp32 = (trained / "model" / "model.safetensors").stat().st_size
    assert quantized < 0.6 * fp32 and r["after"]["size_bytes"] == quantized
    assert abs(r["perplexity_change"]) < 0.2

    loaded = load_model(out)
    assert loaded.format == "int8-fused"
    logits = loaded.model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()


def test_fp16_halves_the_weights(trained: Path, wl_env: dict[str, str],
                                 tmp_path: Path) -> None:
    out = tmp_path / "fp16"
    r = compress(trained, out, wl_env, "--method", "fp16")
    assert r["format"] == "fp16"
    assert 1.9 < r["size_ratio"] < 2.1 and r["linear_size_ratio"] == pytest.approx(2.0)
    assert abs(r["perplexity_change"]) < 0.05


def test_distill_trains_a_student_against_the_teacher(
        trained: Path, wl_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "student"
    r = compress(trained, out, wl_env, "--method", "distill", "--student", "micro",
                 "--max-steps", "3", "--lr", "3e-3", "--checkpoint-every", "100")
    assert r["method"] == "distill" and r["student"] == "micro"
    assert r["teacher"] == str((trained / "model").resolve())
    assert r["training"]["steps"] == 3 and math.isfinite(r["training"]["final_loss"])
    assert r["before"]["perplexity"] != r["after"]["perplexity"]  # teacher vs student
    assert (out / "model" / "model.safetensors").is_file()


def _one_error_line(stderr: str, folder: Path) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert str(folder) in lines[0] and "Traceback" not in stderr


@pytest.mark.parametrize("case", ["missing", "no-config", "corrupt-weights"])
def test_a_bad_model_folder_is_one_error_line_and_exit_2(
        case: str, trained: Path, wl_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "model"
    if case == "no-config":
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 64)
    elif case == "corrupt-weights":
        shutil.copytree(trained / "model", folder)
        (folder / "model.safetensors").write_bytes(b"garbage, not safetensors" * 100)
    proc = run_workload("compress", ["--model", str(folder), "--output",
                                     str(tmp_path / "out"), "--method", "int8"],
                        wl_env, check=False)
    assert proc.returncode == 2, proc.stderr
    _one_error_line(proc.stderr, folder)
    assert not (tmp_path / "out" / "results.json").exists()


def test_output_may_not_overwrite_the_source(trained: Path, wl_env: dict[str, str]) -> None:
    proc = run_workload("compress", ["--model", str(trained), "--output", str(trained),
                                     "--method", "fp16"], wl_env, check=False)
    assert proc.returncode == 2 and "overwrite" in proc.stderr, proc.stderr
    assert (trained / "model" / "model.safetensors").is_file()
