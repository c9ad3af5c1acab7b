"""Structured pruning of Llama-style models: whole decoder layers, attention
heads (by key/value group) and MLP intermediate channels are cut out, so the
result is a smaller dense model that ``from_pretrained`` loads with its
updated config, and that is smaller on disk and faster for it.

Contract
========

- Works on any model whose base (``model.base_model``) has ``layers``, a
  list of decoder layers each with ``self_attn.{q,k,v,o}_proj`` and
  ``mlp.{gate,up,down}_proj`` (``LlamaForCausalLM``, and the classifier
  ``LlamaForSequenceClassification``, whose base is the same). Anything else
  is a `WorkloadError` naming what is missing.
- Importance is measured on held-out token rows (`blocks`, shape
  ``(rows, tokens)``), at most `max_batches` batches of `batch_size` rows, in
  eval mode and without gradients: one forward pass per batch, with hooks.
  Lower scores mean less needed, everywhere.
- `drop_layers`, `prune_heads` and `prune_channels` change the model they are
  given, in place, and return it; `prune_structured` works on a deep copy
  and leaves its argument as it was (the unpruned model stays usable, as the
  teacher of a distillation recovery or for the next trial of a search).
- Requests that cannot be met (an index out of range, a kept count of zero,
  a head count the config cannot express) are a `WorkloadError` naming the
  option (``--drop-layers``, ``--keep-heads``, ``--keep-channels``) and the
  allowed range.

Why these scores:

- layers: the mean angular distance ``arccos(cos(h_in, h_out)) / pi``
  between a layer's input and output hidden states, per token (ShortGPT's
  block influence; Gromov et al., "The Unreasonable Ineffectiveness of the
  Deeper Layers"). A layer whose output points where its input did changes
  little in the residual stream, so removing it whole costs little; the score
  needs no labels and no gradients, only one forward pass.
- heads: per key/value group, the mean L2 norm of what the group's query
  heads add to the residual stream (each head's slice of ``o_proj``'s input
  times its columns of ``o_proj``). A head whose weights are zero adds
  nothing and scores 0, the lowest.
- channels: per intermediate channel j, ``mean |act(gate_j) * up_j| *
  ||down[:, j]||``, the mean norm of that channel's contribution to the MLP
  output (exact, since a channel adds a scalar times one column).

LlamaConfig has one ``num_attention_heads``, ``num_key_value_heads`` and
``intermediate_size`` for every layer, so heads and channels are kept in the
same number in every layer (each layer keeps its own best ones), and
transformers requires ``hidden_size`` to be a multiple of
``num_attention_heads``: a kept head count that is not is moved to the
nearest one that is. ``head_dim`` is written into the config explicitly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

from engine.workloads.common import WorkloadError

__all__ = [
    "allowed_group_counts",
    "channel_importance",
    "check_request",
    "decoder_layers",
    "drop_layers",
    "head_importance",
    "keep_count",
    "layer_importance",
    "parameter_count",
    "prune_channels",
    "prune_heads",
    "prune_structured",
]


# ---------------------------------------------------------------- the model's parts
def decoder_layers(model: Any) -> Any:
    """The model's decoder layers (an nn.ModuleList), checked to be
    Llama-style."""
    base = getattr(model, "base_model", model)
    layers = getattr(base, "layers", None)
    name = type(model).__name__
    if layers is None or not len(layers):
        raise WorkloadError(f"model {name}: no decoder layers (base_model.layers) found; "
                            "structured pruning needs a Llama-style model")
    for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        owner: Any = layers[0]
        for attr in part.split("."):
            owner = getattr(owner, attr, None)
        if owner is None:
            raise WorkloadError(f"model {name}: its decoder layers have no {part}; structured "
                                "pruning needs a Llama-style model (LlamaForCausalLM)")
    return layers


def _shape(model: Any) -> tuple[int, int, int]:
    """(kv groups, query heads per group, head_dim) of the model's attention."""
    cfg = model.config
    heads = int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return kv, heads // kv, head_dim


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _batches(blocks: Any, batch_size: int, max_batches: int) -> Iterator[Any]:
    for b, start in enumerate(range(0, len(blocks), batch_size)):
        if b >= max_batches:
            return
        yield blocks[start:start + batch_size]


def _run(model: Any, blocks: Any, batch_size: int, max_batches: int,
         handles: list[Any]) -> None:
    """Forward passes over the batches while the hooks in `handles` collect
    the scores; the hooks are removed afterwards, whatever happens."""
    import torch

    was_training = model.training
    try:
        if len(blocks) == 0:
            raise WorkloadError("no rows to measure importance on; use a larger corpus "
                                "or a smaller --block-size")
        device = next(model.parameters()).device
        model.eval()
        with torch.no_grad():
            for batch in _batches(blocks, batch_size, max_batches):
                model(input_ids=batch.to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


# ---------------------------------------------------------------- layers
def layer_importance(model: Any, blocks: Any, batch_size: int = 8,
                     max_batches: int = 4) -> list[float]:
    """Per decoder layer, the mean angular distance arccos(cos(h_in, h_out))
    / pi between its input and output hidden states over the held-out
    tokens, in [0, 1]; the lowest is the most redundant layer (see the
    module docstring for why)."""
    import torch

    layers = decoder_layers(model)
    sums = [0.0] * len(layers)
    counts = [0] * len(layers)
    inputs: dict[int, Any] = {}
    handles = []

    def before(i: int) -> Any:
        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def after(i: int) -> Any:
        def hook(_module: Any, _args: Any, _kwargs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(inputs.pop(i).float(), out.float(),
                                                        dim=-1)
            angle = torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi
            sums[i] += float(angle.sum())
            counts[i] += angle.numel()
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(before(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(after(i), with_kwargs=True))
    _run(model, blocks, batch_size, max_batches, handles)
    return [s / max(1, c) for s, c in zip(sums, counts, strict=True)]


def drop_layers(model: Any, indices: list[int]) -> Any:
    """Remove the decoder layers at `indices` (in place); the rest are
    renumbered (``self_attn.layer_idx``, which the KV cache is indexed by)
    and ``config.num_hidden_layers`` (and ``layer_types``, where the config
    has it) updated."""
    import torch

    layers = decoder_layers(model)
    n = len(layers)
    drop = set(indices)
    bad = sorted(i for i in drop if not 0 <= i < n)
    if bad:
        raise WorkloadError(f"--drop-layers: layer {bad[0]} is not in the model (it has {n} "
                            f"decoder layers, 0..{n - 1})")
    if len(drop) >= n:
        raise WorkloadError(f"--drop-layers {len(drop)}: the model has {n} decoder layers and "
                            f"at least one must stay; expected 0..{n - 1}")
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    for i, layer in enumerate(kept):
        layer.self_attn.layer_idx = i
    base = getattr(model, "base_model", model)
    base.layers = torch.nn.ModuleList(kept)
    cfg = model.config
    types = getattr(cfg, "layer_types", None)
    if types is not None and len(types) == n:
        cfg.layer_types = [t for i, t in enumerate(types) if i not in drop]
    cfg.num_hidden_layers = len(kept)
    return model


#: `drop_layers` under a second name: prune_structured's keyword of the same
#: name shadows the function inside it.
_remove_layers = drop_layers


# ---------------------------------------------------------------- heads
def head_importance(model: Any, blocks: Any, batch_size: int = 8,
                    max_batches: int = 4) -> list[list[float]]:
    """Per layer, per key/value group: the mean L2 norm (over held-out
    tokens, and over the group's query heads) of what each head adds to the
    residual stream through ``o_proj``. A zeroed group scores 0."""
    layers = decoder_layers(model)
    kv, rep, head_dim = _shape(model)
    heads = kv * rep
    sums = [[0.0] * heads for _ in layers]
    counts = [0] * len(layers)
    handles = []

    def hook_for(i: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].float()                               # (B, T, heads * head_dim)
            w = module.weight.float()                         # (hidden, heads * head_dim)
            for h in range(heads):
                cols = slice(h * head_dim, (h + 1) * head_dim)
                contribution = x[..., cols] @ w[:, cols].T    # (B, T, hidden)
                sums[i][h] += float(contribution.norm(dim=-1).sum())
            counts[i] += x.shape[0] * x.shape[1]
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(hook_for(i)))
    _run(model, blocks, batch_size, max_batches, handles)
    return [[sum(per_head[g * rep:(g + 1) * rep]) / (rep * max(1, c)) for g in range(kv)]
            for per_head, c in zip(sums, counts, strict=True)]


def _sliced(linear: Any, rows: Any = None, cols: Any = None) -> Any:
    """A new nn.Linear holding `linear`'s weight rows (outputs) and/or
    columns (inputs) at the given indices, same dtype and device."""
    import torch

    w = linear.weight.detach()
    b = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
    if cols is not None:
        w = w[:, cols]
    out = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device,
                          dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
    return out


def allowed_group_counts(model: Any) -> list[int]:
    """The kv-group counts the config can express: transformers requires
    hidden_size to be a multiple of num_attention_heads."""
    kv, rep, _ = _shape(model)
    hidden = int(model.config.hidden_size)
    return [g for g in range(1, kv + 1) if hidden % (g * rep) == 0]


def prune_heads(model: Any, keep: list[list[int]]) -> Any:
    """Keep, in layer i, the key/value groups `keep[i]` (the same number in
    every layer), with their query heads: the rows of q/k/v_proj and the
    columns of o_proj are sliced group by group, in place. The config's
    head counts are updated and ``head_dim`` set explicitly (hidden_size no
    longer has to equal heads x head_dim)."""
    import torch

    layers = decoder_layers(model)
    kv, rep, head_dim = _shape(model)
    if len(keep) != len(layers):
        raise WorkloadError(f"prune_heads: {len(keep)} lists of kept groups for "
                            f"{len(layers)} layers; expected one per layer")
    counts = {len(set(k)) for k in keep}
    if len(counts) != 1:
        raise WorkloadError("--keep-heads: LlamaConfig has one head count for every layer; "
                            f"expected the same number of kv groups kept in each (got {counts})")
    count = counts.pop()
    if count < 1:
        raise WorkloadError(f"--keep-heads: no key/value group kept of {kv}; expected at least "
                            "one per layer")
    if count not in allowed_group_counts(model):
        raise WorkloadError(f"--keep-heads: {count} of {kv} kv groups is {count * rep} heads, "
                            f"which hidden_size {model.config.hidden_size} is not a multiple "
                            f"of; expected one of {allowed_group_counts(model)} groups")
    for i, (layer, groups) in enumerate(zip(layers, keep, strict=True)):
        groups = sorted(set(groups))
        if any(not 0 <= g < kv for g in groups):
            raise WorkloadError(f"prune_heads: layer {i} keeps groups {groups}; expected "
                                f"indices in 0..{kv - 1}")
        q_heads = [g * rep + r for g in groups for r in range(rep)]
        q_idx = torch.tensor([h * head_dim + d for h in q_heads for d in range(head_dim)])
        kv_idx = torch.tensor([g * head_dim + d for g in groups for d in range(head_dim)])
        attn = layer.self_attn
        attn.q_proj = _sliced(attn.q_proj, rows=q_idx)
        attn.k_proj = _sliced(attn.k_proj, rows=kv_idx)
        attn.v_proj = _sliced(attn.v_proj, rows=kv_idx)
        attn.o_proj = _sliced(attn.o_proj, cols=q_idx)
    cfg = model.config
    cfg.head_dim = head_dim
    cfg.num_key_value_heads = count
    cfg.num_attention_heads = count * rep
    return model


# ---------------------------------------------------------------- channels
def channel_importance(model: Any, blocks: Any, batch_size: int = 8,
                       max_batches: int = 4) -> list[list[float]]:
    """Per layer, per MLP intermediate channel j: mean |act(gate_j) * up_j|
    over held-out tokens times ||down_proj[:, j]||, the mean norm of the
    channel's contribution to the layer's output."""
    import torch

    layers = decoder_layers(model)
    sums: list[Any] = [None] * len(layers)
    counts = [0] * len(layers)
    handles = []

    def hook_for(i: int) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].float().abs()
            total = x.reshape(-1, x.shape[-1]).sum(0)
            sums[i] = total if sums[i] is None else sums[i] + total
            counts[i] += x.shape[0] * x.shape[1]
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(hook_for(i)))
    _run(model, blocks, batch_size, max_batches, handles)
    out = []
    for layer, s, c in zip(layers, sums, counts, strict=True):
        column_norms = torch.linalg.vector_norm(layer.mlp.down_proj.weight.detach().float(),
                                                dim=0)
        out.append((s.cpu() / max(1, c) * column_norms.cpu()).tolist())
    return out


def prune_channels(model: Any, keep: list[list[int]]) -> Any:
    """Keep, in layer i, the MLP intermediate channels `keep[i]` (the same
    number in every layer: gate/up rows, down columns), in place;
    ``config.intermediate_size`` is updated."""
    import torch

    layers = decoder_layers(model)
    width = int(model.config.intermediate_size)
    counts = {len(set(k)) for k in keep}
    if len(keep) != len(layers) or len(counts) != 1:
        raise WorkloadError("--keep-channels: LlamaConfig has one intermediate_size; expected "
                            "the same number of channels kept in every layer")
    count = counts.pop()
    if count < 1:
        raise WorkloadError(f"--keep-channels: no channel kept of {width}; expected at least "
                            "one per layer")
    for i, (layer, channels) in enumerate(zip(layers, keep, strict=True)):
        channels = sorted(set(channels))
        if any(not 0 <= c < width for c in channels):
            raise WorkloadError(f"prune_channels: layer {i} keeps channel indices outside "
                                f"0..{width - 1}")
        idx = torch.tensor(channels)
        mlp = layer.mlp
        mlp.gate_proj = _sliced(mlp.gate_proj, rows=idx)
        mlp.up_proj = _sliced(mlp.up_proj, rows=idx)
        mlp.down_proj = _sliced(mlp.down_proj, cols=idx)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = count
    model.config.intermediate_size = count
    return model


# ---------------------------------------------------------------- the entry point
def keep_count(ratio: float, total: int, option: str, noun: str) -> int:
    """round(ratio * total), at least 1 and at most `total`; a ratio that
    keeps nothing is a WorkloadError naming `option` and the range."""
    if not 0 < ratio <= 1:
        raise WorkloadError(f"{option} {ratio:g}: out of range; expected a share in (0, 1]")
    count = min(total, math.floor(ratio * total + 0.5))
    if count < 1:
        raise WorkloadError(f"{option} {ratio:g} keeps none of the {total} {noun}; expected a "
                            f"share in [{0.5 / total:.3g}, 1] (at least one kept)")
    return count


def _lowest(scores: list[float], k: int) -> list[int]:
    """Indices of the k lowest scores (ties: the later index first, so that
    equal layers are dropped from the top of the stack)."""
    return sorted(sorted(range(len(scores)), key=lambda i: (scores[i], -i))[:k])


def _highest(scores: list[float], k: int) -> list[int]:
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


def check_request(model: Any, drop_layers: int = 0, keep_heads: float = 1.0,
                  keep_channels: float = 1.0) -> None:
    """Refuse, before any work, a request `prune_structured` cannot meet on
    `model` (not Llama-style, every layer dropped, nothing kept)."""
    n = len(decoder_layers(model))
    if not 0 <= drop_layers < n:
        raise WorkloadError(f"--drop-layers {drop_layers}: the model has {n} decoder layers "
                            f"and at least one must stay; expected 0..{n - 1}")
    kv, _, _ = _shape(model)
    keep_count(keep_heads, kv, "--keep-heads", "key/value groups")
    keep_count(keep_channels, int(model.config.intermediate_size), "--keep-channels",
               "MLP channels")


def prune_structured(model: Any, blocks: Any, *, drop_layers: int = 0, keep_heads: float = 1.0,
                     keep_channels: float = 1.0, batch_size: int = 8,
                     max_batches: int = 4) -> tuple[Any, dict[str, Any]]:
    """Prune a deep copy of `model`: drop the `drop_layers` layers of lowest
    angular distance, then keep the `keep_heads` share of kv groups and the
    `keep_channels` share of MLP channels of highest importance, each
    measured on `blocks` after the step before it. Ratios are rounded to
    whole groups and channels (heads to a count the config can express).
    Returns (the pruned copy, a report: layers dropped and all layer
    scores, kv groups kept per layer, channels kept, parameters before and
    after, and the new config's shape)."""
    check_request(model, drop_layers, keep_heads, keep_channels)
    n = len(decoder_layers(model))
    kv, rep, _ = _shape(model)
    width = int(model.config.intermediate_size)
    requested_groups = keep_count(keep_heads, kv, "--keep-heads", "key/value groups")
    kept_channels = keep_count(keep_channels, width, "--keep-channels", "MLP channels")
    pruned = copy.deepcopy(model)
    report: dict[str, Any] = {"parameters_before": parameter_count(model),
                              "layers_before": n, "kv_groups_before": kv,
                              "heads_per_group": rep, "channels_before": width}
    scores = layer_importance(pruned, blocks, batch_size, max_batches)
    dropped = _lowest(scores, drop_layers)
    report.update({"layer_importance": "angular distance arccos(cos(h_in, h_out))/pi",
                   "layer_scores": scores, "layers_dropped": dropped,
                   "dropped_scores": [scores[i] for i in dropped]})
    if dropped:
        _remove_layers(pruned, dropped)
    allowed = allowed_group_counts(pruned)
    groups = min(allowed, key=lambda g: (abs(g - requested_groups), -g))
    report.update({"kv_groups_requested": requested_groups, "kv_groups_kept": groups})
    if groups < kv:
        head_scores = head_importance(pruned, blocks, batch_size, max_batches)
        keep = [_highest(s, groups) for s in head_scores]
        prune_heads(pruned, keep)
        report["kv_groups_kept_per_layer"] = keep
        report["head_scores"] = head_scores
    else:
        report["kv_groups_kept_per_layer"] = [list(range(kv)) for _ in range(len(
            decoder_layers(pruned)))]
    report["channels_kept"] = kept_channels
    if kept_channels < width:
        channel_scores = channel_importance(pruned, blocks, batch_size, max_batches)
        prune_channels(pruned, [_highest(s, kept_channels) for s in channel_scores])
    cfg = pruned.config
    report.update({
        "parameters_after": parameter_count(pruned),
        "config": {"num_hidden_layers": int(cfg.num_hidden_layers),
                   "num_attention_heads": int(cfg.num_attention_heads),
                   "num_key_value_heads": int(cfg.num_key_value_heads),
                   "head_dim": int(getattr(cfg, "head_dim", 0) or 0),
                   "intermediate_size": int(cfg.intermediate_size)},
    })
    report["parameter_ratio"] = report["parameters_after"] / max(1, report["parameters_before"])
    return pruned, report
