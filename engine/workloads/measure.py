"""Measurements shared by training, compression and evaluation: held-out
loss and perplexity, classification accuracy, CPU latency per batch, size on
disk and parameter counts. Pure functions of a model and tensors."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def lm_loss_sums(model: Any, blocks: Any, batch_size: int, device: Any,
                 max_batches: int | None = None) -> tuple[float, int]:
    """(sum of token losses, number of predicted tokens) over `blocks`."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for b, start in enumerate(range(0, len(blocks), batch_size)):
            if max_batches is not None and b >= max_batches:
                break
            ids = blocks[start:start + batch_size].to(device)
            out = model(input_ids=ids, labels=ids)
            n = ids.shape[0] * (ids.shape[1] - 1)
            total += float(out.loss) * n
            count += n
    return total, count


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def classification_sums(model: Any, ids: Any, mask: Any, labels: Any, batch_size: int,
                        device: Any) -> tuple[float, int, int]:
    """(sum of losses, correct predictions, examples)."""
    import torch

    loss_sum, correct, count = 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            sl = slice(start, start + batch_size)
            y = labels[sl].to(device)
            out = model(input_ids=ids[sl].to(device), attention_mask=mask[sl].to(device),
                        labels=y)
            loss_sum += float(out.loss) * len(y)
            correct += int((out.logits.argmax(-1) == y).sum())
            count += len(y)
    return loss_sum, correct, count


def latency(model: Any, batch: Any, repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Forward-pass time per batch on the CPU: median and p90 in ms, and
    tokens per second at the median."""
    import torch

    model.eval()
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(input_ids=batch)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    times.sort()
    median = statistics.median(times)
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return {"latency_ms": median * 1000, "latency_p90_ms": p90 * 1000,
            "tokens_per_s": batch.numel() / median if median > 0 else 0.0}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def weight_bytes(folder: Path) -> int:
    """Bytes of the weight files alone (tokenizer and config left out)."""
    names = ("model.safetensors", "pytorch_model.bin", "quantized.pt")
    return sum(p.stat().st_size for p in Path(folder).iterdir()
               if p.name in names or p.name.startswith("model-"))


def parameter_counts(model: Any) -> dict[str, int]:
    """Parameters and non-zero parameters, quantized Linear weights included
    (buffers such as rotary frequencies are not parameters)."""
    import torch

    model = _unwrap(model)
    total = nonzero = 0
    seen: set[int] = set()
    for tensor in model.parameters():
        if id(tensor) in seen or not tensor.is_floating_point():
            continue
        seen.add(id(tensor))
        total += tensor.numel()
        nonzero += int(torch.count_nonzero(tensor))
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if callable(weight) and module.__class__.__module__.startswith("torch.ao.nn.quantized"):
            w = weight()
            total += w.numel()
            nonzero += int(torch.count_nonzero(w.int_repr()))
    return {"parameters": total, "nonzero_parameters": nonzero}


def linear_weight_bytes(model: Any) -> int:
    """Bytes the Linear layers' weights take in memory (int8 packed or float)."""
    import torch

    total = 0
    for module in _unwrap(model).modules():
        if isinstance(module, torch.nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif module.__class__.__module__.startswith("torch.ao.nn.quantized"):
            weight = getattr(module, "weight", None)
            if callable(weight):
                total += weight().int_repr().numel()  # one byte per int8 weight
    return total
