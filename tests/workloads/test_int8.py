"""int8 inference (engine.workloads.int8, models.quantize_int8): the fused
int8 model computes what the fp32 model does, its Linear weights take a
quarter of the bytes, it saves and loads back to the same logits, the older
unfused "int8-dynamic" folders still load, fusion handles pruned shapes
(explicit head_dim, grouped-query heads), and the kernel engine and the
CUDA path are chosen from the machine. No timing here: speed is measured
by bench/workloads.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.workloads.common import WorkloadError

#: /proc/cpuinfo flag lines as recorded on real machines (trimmed to the
#: flags that matter and a few around them).
CPUINFO = {
    # this AMD EPYC: AVX2, no VNNI
    "avx2": "flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes\n",
    # Intel Xeon Cascade Lake: AVX-512 with VNNI
    "vnni": "flags\t\t: fpu sse2 avx avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni\n",
    # Intel Xeon Sapphire Rapids: AMX tiles
    "amx": "flags\t\t: avx2 avx512f avx512_vnni avx_vnni avx512_bf16 amx_bf16 amx_tile "
           "amx_int8\n",
    # AWS Graviton (aarch64): "Features", no x86 flags
    "other": "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 asimddp\n",
}


def test_engine_is_chosen_from_the_cpu_flags() -> None:
    from engine.workloads import int8

    every = ["qnnpack", "onednn", "x86", "fbgemm"]
    for kind, text in CPUINFO.items():
        flags = int8.cpu_flags(text)
        assert flags and int8.cpu_kind(flags) == kind
    assert int8.choose_engine(int8.cpu_flags(CPUINFO["avx2"]), every) == "onednn"
    assert int8.choose_engine(int8.cpu_flags(CPUINFO["vnni"]), every) == "onednn"
    assert int8.choose_engine(int8.cpu_flags(CPUINFO["amx"]), every) == "onednn"
    assert int8.choose_engine(int8.cpu_flags(CPUINFO["other"]), every) == "x86"
    assert int8.choose_engine(int8.cpu_flags(CPUINFO["other"]), ["none", "qnnpack"]) == "qnnpack"
    # a build without oneDNN falls back to fbgemm's kernels
    assert int8.choose_engine(int8.cpu_flags(CPUINFO["vnni"]), ["fbgemm", "none"]) == "fbgemm"
    with pytest.raises(WorkloadError, match="no quantized engine"):
        int8.choose_engine(int8.cpu_flags(CPUINFO["avx2"]), ["none"])
    assert int8.cpu_flags("model name\t: no flags line\n") == frozenset()
    assert int8.choose_path("cpu") == "dynamic" and int8.choose_path("cuda") == "weight-only"
    with pytest.raises(WorkloadError, match="expected cpu or cuda"):
        int8.choose_path("mps")


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # torch.load of int8 weights
def test_fused_int8_matches_fp32_is_a_quarter_the_size_and_reloads(
        trained: Path, tmp_path: Path) -> None:
    import torch

    from engine.workloads import int8
    from engine.workloads.measure import linear_weight_bytes
    from engine.workloads.models import (
        INT8_FORMAT,
        load_model,
        quantize_int8,
        runtime,
        save_model,
    )

    fp32 = load_model(trained)
    ids = torch.randint(0, fp32.model.config.vocab_size, (4, 48),
                        generator=torch.Generator().manual_seed(0))
    reference = _logits(fp32.model, ids)
    assert runtime(fp32.model) == {"engine": "aten", "dtype": "float32", "attention": "sdpa",
                                   "fused": ""}

    # fusion alone is exact up to float summation order
    fused = int8.fuse_projections(load_model(trained).model)
    assert not any(n.endswith(("q_proj", "gate_proj")) for n, _ in fused.named_modules())
    assert torch.allclose(_logits(fused, ids), reference, atol=1e-4)

    loaded = load_model(trained)
    loaded.model = quantized = quantize_int8(loaded.model)
    got = _logits(quantized, ids)
    # int8 weights and activations: 8-bit steps of ~0.4 % of each tensor's
    # range, summed over a few layers; the logits stay within 5 % of their
    # spread and the predicted token almost always agrees
    spread = float(reference.std())
    assert float((got - reference).abs().max()) < 0.05 * spread * 10
    assert float((got - reference).abs().mean()) < 0.05 * spread
    agree = float((got.argmax(-1) == reference.argmax(-1)).float().mean())
    assert agree > 0.9, agree
    assert linear_weight_bytes(fp32.model) / linear_weight_bytes(quantized) == pytest.approx(
        4.0, rel=0.01)
    info = runtime(quantized)
    assert info["dtype"] == "int8" and info["fused"] == int8.FUSED
    assert info["engine"] == int8.choose_engine(
        int8.cpu_flags(), torch.backends.quantized.supported_engines)

    loaded.format = INT8_FORMAT
    folder = save_model(loaded, tmp_path / "int8")
    back = load_model(folder)
    assert back.format == "int8-fused" and (folder / "quantized.pt").is_file()
    assert torch.equal(_logits(back.model, ids), got)  # the same int8 numbers, the same kernels
    meta = json.loads((folder / "llmconsole.json").read_text())
    assert meta["int8"] == {"engine": info["engine"], "scheme": "dynamic",
                            "fused": int8.FUSED}
    # a fused layout this version does not read is one clear error, not wrong logits
    meta["int8"]["fused"] = "qkv,gate_up"
    (folder / "llmconsole.json").write_text(json.dumps(meta))
    with pytest.raises(WorkloadError, match="compress the fp32 model again"):
        load_model(folder)

    # the older unfused format, as earlier versions saved it, still loads
    old = load_model(trained)
    old.model = quantize_int8(old.model, fuse=False)
    old.format = "int8-dynamic"
    old_logits = _logits(old.model, ids)
    old_back = load_model(save_model(old, tmp_path / "old"))
    assert old_back.format == "int8-dynamic"
    assert any(n.endswith("q_proj") for n, _ in old_back.model.named_modules())
    assert torch.equal(_logits(old_back.model, ids), old_logits)


def test_fusion_and_both_int8_paths_work_on_pruned_shapes() -> None:
    """A Llama config as structured pruning leaves it: explicit head_dim,
    2 query heads of 16 (not hidden / heads = 32) sharing 1 key/value head,
    a narrow MLP."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.workloads import int8
    from engine.workloads.models import quantize_int8

    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=40,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=16, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 97, (2, 20))
    reference = _logits(model, ids)
    fused = int8.fuse_projections(LlamaForCausalLM(config).eval())
    fused.load_state_dict(int8.fuse_projections(model).state_dict())
    attn = fused.model.layers[0].self_attn
    assert attn.qkv_proj.out_features == (2 + 1 + 1) * 16 and attn.qkv_split == [32, 16, 16]
    assert torch.allclose(_logits(fused, ids), reference, atol=1e-5)
    with pytest.raises(WorkloadError, match="no Llama attention"):
        int8.fuse_projections(torch.nn.Sequential(torch.nn.Linear(4, 4)))

    quantized = quantize_int8(fused)  # an already fused model is left fused
    assert torch.isfinite(_logits(quantized, ids)).all()
    assert (_logits(quantized, ids).argmax(-1) == reference.argmax(-1)).float().mean() > 0.8

    # the CUDA path's weight-only Linear runs on the CPU too: int8 weights,
    # one scale per row, float activations, so it is closer to fp32 than
    # dynamic int8 is
    weight_only = int8.quantize_weight_only(model)  # (model was fused above, in place)
    wo = weight_only.model.layers[0].mlp.down_proj
    assert wo.weight_int8.dtype == torch.int8 and wo.weight_int8.shape == (64, 40)
    got = _logits(weight_only, ids)
    assert float((got - reference).abs().max()) < 0.05 * float(reference.std()) * 10
