"""int8 inference of the Llama models `engine.workloads.models` builds: the
projection fusion that feeds the int8 kernels bigger GEMMs, the choice of
the CPU's quantized-kernel engine from its instruction set, dynamic int8
quantization for the CPU and weight-only int8 for CUDA.

Fusion: q/k/v become one ``qkv_proj`` Linear and gate/up one
``gate_up_proj`` (their weights stacked by rows, so the outputs are the
same numbers, split). With dynamic quantization each Linear quantizes its
input on the fly; fused, the attention input is quantized once instead of
three times and the MLP input once instead of twice, and the GEMMs are
wider. The query and key rows are reordered so that the rotary embedding
is one complex multiply over queries and keys together. It works on any
head count and head size (the split sizes are read from the Linear layers,
not the config), so pruned models fuse too.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from engine.workloads.common import WorkloadError

#: The fused layout `fuse_projections` makes (``int8.fused`` in llmconsole.json;
#: a folder with another was written by another version and is refused).
FUSED = "qkv-interleaved,gate_up"


def _llama() -> Any:
    from transformers.models.llama import modeling_llama

    return modeling_llama


def _stack(parts: Iterable[Any]) -> Any:
    """One nn.Linear whose output is the parts' outputs, concatenated."""
    import torch

    parts = list(parts)
    first = parts[0]
    out = sum(p.out_features for p in parts)
    bias = first.bias is not None
    fused = torch.nn.Linear(first.in_features, out, bias=bias,
                            dtype=first.weight.dtype, device=first.weight.device)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.weight for p in parts], dim=0))
        if bias:
            fused.bias.copy_(torch.cat([p.bias for p in parts], dim=0))
    return fused


def _interleave_rows(linear: Any, head_dim: int) -> None:
    """Reorder, in place, each head's output rows of `linear` from rotary's
    half-split layout (pairs i and i + head_dim/2) to interleaved (pairs 2i
    and 2i+1), so the rotation is one complex multiply. Applied to the
    query and key rows alike, it leaves every q.k product unchanged."""
    import torch

    half = head_dim // 2
    order = torch.stack((torch.arange(half), torch.arange(half) + half), dim=-1).flatten()
    with torch.no_grad():
        w = linear.weight.view(-1, head_dim, linear.in_features)
        linear.weight.copy_(w[:, order].reshape_as(linear.weight))
        if linear.bias is not None:
            linear.bias.copy_(linear.bias.view(-1, head_dim)[:, order].flatten())


def _fused_attention_class() -> type:
    llama = _llama()

    class FusedLlamaAttention(llama.LlamaAttention):  # type: ignore[name-defined]
        """LlamaAttention with q/k/v as one Linear (``qkv_proj``, the query
        and key rows interleaved per head: `_interleave_rows`) and the
        rotary embedding applied to queries and keys at once as a complex
        multiply (one kernel where upstream runs ten); the cache and the
        attention interface are upstream's."""

        def forward(self, hidden_states: Any, position_embeddings: Any = None,
                    attention_mask: Any = None, **kwargs: Any) -> Any:
            import torch

            batch, length = hidden_states.shape[:2]
            n_q, n_k, _ = self.qkv_split
            d = self.head_dim
            qkv = self.qkv_proj(hidden_states)
            cos, sin = position_embeddings
            if cos.shape[-1] != d:
                raise WorkloadError(f"rotary size {cos.shape[-1]} is not the head size {d}; "
                                    "the fused int8 format needs full rotary embeddings")
            # upstream's cos/sin are cat(f, f): the first half is one value per pair
            turn = torch.complex(cos[..., :d // 2].float(), sin[..., :d // 2].float())
            qk = qkv[..., :n_q + n_k].reshape(batch, length, -1, d // 2, 2)
            rotated = torch.view_as_real(torch.view_as_complex(qk.float()) * turn.unsqueeze(2))
            rotated = rotated.flatten(3).to(qkv.dtype)
            heads = n_q // d
            query = rotated[:, :, :heads].transpose(1, 2)
            key = rotated[:, :, heads:].transpose(1, 2)
            value = qkv[..., n_q + n_k:].reshape(batch, length, -1, d).transpose(1, 2)
            cache = next((kwargs.pop(n) for n in ("cache", "past_key_values", "past_key_value")
                          if n in kwargs), None)
            if cache is not None:
                key, value = cache.update(key, value, self.layer_idx,
                                          {"sin": sin, "cos": cos,
                                           "cache_position": kwargs.get("cache_position")})
            interface = llama.ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, llama.eager_attention_forward)
            out, weights = interface(self, query, key, value, attention_mask,
                                     dropout=0.0 if not self.training else self.attention_dropout,
                                     scaling=self.scaling, **kwargs)
            out = out.reshape(batch, length, -1).contiguous()
            return self.o_proj(out), weights

    return FusedLlamaAttention


def _fused_mlp_class() -> type:
    llama = _llama()

    class FusedLlamaMLP(llama.LlamaMLP):  # type: ignore[name-defined]
        """LlamaMLP with gate and up as one Linear (``gate_up_proj``)."""

        def forward(self, x: Any) -> Any:
            import torch

            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            if torch.is_grad_enabled():
                return self.down_proj(self.act_fn(gate) * up)
            # inference: one new tensor instead of two (the activation, then
            # the product in place): these are the MLP's widest tensors
            return self.down_proj(self.act_fn(gate).mul_(up))

    return FusedLlamaMLP


_CLASSES: dict[str, type] = {}


def _classes() -> tuple[type, type]:
    if not _CLASSES:  # built once: isinstance checks and pickling need one class each
        _CLASSES["attention"] = _fused_attention_class()
        _CLASSES["mlp"] = _fused_mlp_class()
    return _CLASSES["attention"], _CLASSES["mlp"]


def fuse_projections(model: Any) -> Any:
    """Fuse, in place, every LlamaAttention's q/k/v and every LlamaMLP's
    gate/up into one Linear each; the outputs are unchanged (up to float
    summation order). Returns `model`. A model with no Llama layers is a
    `WorkloadError` (the fused formats are for Llama models only)."""
    llama = _llama()
    attention_cls, mlp_cls = _classes()
    fused = 0
    for module in model.modules():
        if isinstance(module, attention_cls | mlp_cls):
            fused += 1
        elif isinstance(module, llama.LlamaAttention):
            parts = (module.q_proj, module.k_proj, module.v_proj)
            for rotated in parts[:2]:
                _interleave_rows(rotated, module.head_dim)
            module.qkv_proj = _stack(parts)
            module.qkv_split = [p.out_features for p in parts]
            del module.q_proj, module.k_proj, module.v_proj
            module.__class__ = attention_cls
            fused += 1
        elif isinstance(module, llama.LlamaMLP):
            if module.gate_proj.out_features != module.up_proj.out_features:
                raise WorkloadError("the MLP's gate and up projections differ in size "
                                    f"({module.gate_proj.out_features} and "
                                    f"{module.up_proj.out_features}); prune them together")
            module.gate_up_proj = _stack((module.gate_proj, module.up_proj))
            del module.gate_proj, module.up_proj
            module.__class__ = mlp_cls
            fused += 1
    if not fused:
        raise WorkloadError(f"{type(model).__name__} has no Llama attention or MLP layers; "
                            "the fused int8 format is for Llama models")
    return model


# ---------------------------------------------------------------- the CPU engine
#: The instruction-set flags (/proc/cpuinfo) int8 GEMM kernels use, best first.
VNNI_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
#: Engine preference per kind of CPU. oneDNN has AMX and VNNI kernels, and on
#: an AVX2-only AMD EPYC (no VNNI, 1 thread, small preset, 8 x 128 batch) it
#: ran the fused int8 model faster than x86/fbgemm (see bench/workloads.py);
#: fbgemm is the fallback where a build lacks oneDNN, qnnpack the last resort
#: (ARM).
ENGINE_PREFERENCE = {
    "amx": ("onednn", "x86", "fbgemm", "qnnpack"),
    "vnni": ("onednn", "x86", "fbgemm", "qnnpack"),
    "avx2": ("onednn", "x86", "fbgemm", "qnnpack"),
    "other": ("x86", "fbgemm", "onednn", "qnnpack"),
}


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags: of `cpuinfo` (the text of /proc/cpuinfo),
    else of this machine's (empty where there is none)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            return frozenset(value.split())
    return frozenset()


def cpu_kind(flags: Iterable[str]) -> str:
    """"amx", "vnni", "avx2" or "other": what the int8 kernels can use."""
    flags = set(flags)
    if "amx_int8" in flags:
        return "amx"
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "vnni"
    if "avx2" in flags:
        return "avx2"
    return "other"


def choose_engine(flags: Iterable[str], supported: Iterable[str]) -> str:
    """The quantized-kernel engine for a CPU with `flags`, among the
    `supported` ones (torch.backends.quantized.supported_engines). Pure."""
    available = [e for e in supported if e != "none"]
    for engine in ENGINE_PREFERENCE[cpu_kind(flags)]:
        if engine in available:
            return engine
    if not available:
        raise WorkloadError("this torch build has no quantized engine; int8 needs a "
                            "build with fbgemm or oneDNN (the standard x86 wheels have both)")
    return available[0]


def set_engine(engine: str | None = None) -> str:
    """Make `engine` (default: `choose_engine` for this CPU) the current
    quantized engine: process-wide, and int8 weights are packed for the
    engine current when they are quantized or loaded, so set it first."""
    import torch

    supported = torch.backends.quantized.supported_engines
    if engine is None:
        engine = choose_engine(cpu_flags(), supported)
    elif engine not in supported:
        raise WorkloadError(f"quantized engine {engine!r} is not in this torch build; "
                            f"expected one of {', '.join(supported)}")
    torch.backends.quantized.engine = engine
    return engine


def quantize_dynamic(model: Any) -> Any:
    """Dynamic int8 quantization, in place, of every nn.Linear of `model`
    (moved to the CPU, as fp32): int8 weights (one scale per tensor),
    activations quantized per call. Returns `model`. The engine must be set
    (`set_engine`) before."""
    import torch

    with warnings.catch_warnings():  # torch.ao's deprecation notice
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model.to("cpu").float(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


# ---------------------------------------------------------------- CUDA: weight-only
def choose_path(device_type: str) -> str:
    """"dynamic" (int8 weights and activations, torch.ao kernels) on the CPU;
    "weight-only" (int8 weights dequantized in the forward, float
    activations) on CUDA, where torch.ao's dynamic kernels do not run."""
    if device_type == "cpu":
        return "dynamic"
    if device_type == "cuda":
        return "weight-only"
    raise WorkloadError(f"int8 on {device_type!r}: expected cpu or cuda")


def _weight_only_class() -> type:
    import torch

    class Int8WeightOnlyLinear(torch.nn.Module):
        """A Linear whose weight is int8 with one float scale per output row
        (symmetric, absmax / 127); the forward multiplies by the int8 weight
        cast to the input's dtype, then scales the output columns (the same
        as dequantizing the weight first, with one multiply per output)."""

        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            w = linear.weight.detach().float()
            scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            self.register_buffer("weight_int8", torch.round(w / scale[:, None])
                                 .clamp(-127, 127).to(torch.int8))
            self.register_buffer("scale", scale.to(linear.weight.dtype))
            self.bias = linear.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            weight: torch.Tensor = self.weight_int8  # type: ignore[assignment]
            scale: torch.Tensor = self.scale  # type: ignore[assignment]
            out = torch.nn.functional.linear(x, weight.to(x.dtype)) * scale.to(x.dtype)
            return out if self.bias is None else out + self.bias.to(x.dtype)

    return Int8WeightOnlyLinear


def quantize_weight_only(model: Any) -> Any:
    """Every nn.Linear of `model` replaced, in place and on its device, by an
    int8 weight-only Linear (`choose_path`'s "weight-only"); returns
    `model`. A quarter of the Linear weight memory."""
    import torch

    cls = _weight_only_class()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, cls(child))
    return model
