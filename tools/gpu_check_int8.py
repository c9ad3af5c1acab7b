"""GPU check of the CUDA int8 path: weight-only int8 Linear layers
(`engine.workloads.int8.quantize_weight_only`) on a small Llama model on
cuda, against the same model in its float dtype.

    python tools/gpu_check_int8.py [--preset small] [--model DIR] [--dtype bf16]

It builds the preset with random weights (or loads ``--model``, a model
folder or a job's output folder), moves it to cuda, checks that
`choose_path("cuda")` picks the weight-only path, quantizes a copy, and
prints one line each: the Linear weight bytes (int8 about a quarter of
fp32's, half of bf16's), the logits' agreement (max and mean absolute
difference over the logits' spread, argmax agreement), and the latency per
8 x 128 batch of both. Exit code 0 when the logits agree (mean difference
under 5 % of the spread, argmax agreement over 90 %), 1 when not, 2 when
there is no CUDA device (one line saying so).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _latency_ms(model: Any, batch: Any, repeats: int = 20) -> float:
    import torch

    times = []
    with torch.no_grad():
        for i in range(repeats + 3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(input_ids=batch)
            torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _linear_bytes(model: Any) -> int:
    import torch

    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif hasattr(module, "weight_int8"):
            total += module.weight_int8.numel()
    return total


def main() -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.workloads import int8
    from engine.workloads.models import PRESETS, load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--model", help="a model folder (else the preset, random weights)")
    p.add_argument("--dtype", default="bf16", choices=("fp32", "bf16", "fp16"))
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA device; run this on the GPU machine", file=sys.stderr)
        return 2
    path = int8.choose_path("cuda")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    torch.manual_seed(0)
    if a.model:
        model = load_model(a.model).model
    else:
        fields: dict[str, Any] = dict(PRESETS[a.preset])
        config = LlamaConfig(vocab_size=2048, max_position_embeddings=512,
                             tie_word_embeddings=False, **fields)
        model = LlamaForCausalLM(config)
    model = model.to("cuda", dtype).eval()
    quantized = int8.quantize_weight_only(copy.deepcopy(model)).eval()
    vocab = model.config.vocab_size
    batch = torch.randint(0, vocab, (8, 128), device="cuda")
    with torch.no_grad():
        ref = model(input_ids=batch).logits.float()
        got = quantized(input_ids=batch).logits.float()
    spread = float(ref.std())
    max_diff = float((got - ref).abs().max()) / spread
    mean_diff = float((got - ref).abs().mean()) / spread
    agree = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    base_ms, int8_ms = _latency_ms(model, batch), _latency_ms(quantized, batch)
    print(f"device {torch.cuda.get_device_name()}, path {path}, dtype {a.dtype}, "
          f"{a.model or a.preset}")
    print(f"linear weight bytes: {a.dtype} {_linear_bytes(model):,}, "
          f"int8 {_linear_bytes(quantized):,}")
    print(f"logits: max diff {max_diff:.4f}, mean diff {mean_diff:.4f} of the spread, "
          f"argmax agreement {agree:.3f}")
    print(f"latency per 8 x 128 batch: {a.dtype} {base_ms:.2f} ms, int8 weight-only "
          f"{int8_ms:.2f} ms ({base_ms / int8_ms:.2f}x)")
    ok = mean_diff < 0.05 and agree > 0.9
    print("ok" if ok else "FAILED: the int8 logits disagree with the float model's")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
