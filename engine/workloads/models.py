"""Model folders: build a tiny Llama-style model from a preset, load one from
a local folder, save one atomically.

A model folder holds ``config.json``, the weights, the tokenizer files and
``llmconsole.json`` (``format``: "fp32", "fp16", "bf16", "int8-fused" or
"int8-dynamic"; ``task``: "causal-lm" or "classification"; ``labels`` for a
classifier; ``int8`` for an int8 model: the engine it was quantized on, the
fused layout). Weights are ``model.safetensors`` (``save_pretrained``)
except for int8, where the quantized state dict is ``quantized.pt`` (loaded
with ``weights_only=True``). "int8-fused" (what `quantize_int8` makes) has
q/k/v and gate/up fused before quantizing (`engine.workloads.int8`);
"int8-dynamic", the older format, quantized each Linear alone: both load.
A folder saved by ``save_pretrained`` elsewhere, with no
``llmconsole.json``, loads too. Wherever a model folder is asked for, the
output folder of a train or compress job (which has ``model/`` inside) will
do.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.workloads.common import WorkloadError, read_json, write_json_atomic

META = "llmconsole.json"
QUANTIZED_WEIGHTS = "quantized.pt"
FORMATS = ("fp32", "fp16", "bf16", "int8-dynamic", "int8-fused")
#: What `quantize_int8` makes; every format in INT8_FORMATS is int8.
INT8_FORMAT = "int8-fused"
INT8_FORMATS = ("int8-dynamic", "int8-fused")
TASKS = ("causal-lm", "classification")

#: name -> LlamaConfig fields. Llama's nn.Linear layers are what int8 dynamic
#: quantization replaces (GPT-2's Conv1D it would leave alone).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4,
             "num_attention_heads": 4, "num_key_value_heads": 4},
    "micro": {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4},
    "small": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 6,
              "num_attention_heads": 8, "num_key_value_heads": 8},
}


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    folder: Path | None
    format: str = "fp32"
    task: str = "causal-lm"
    labels: list[str] = field(default_factory=list)


def model_folder(path: str | Path) -> Path:
    """The model folder at `path`: the folder itself, or its ``model/``
    (a job's output folder). A clear error when there is none."""
    p = Path(path).expanduser()
    if not p.exists():
        raise WorkloadError(f"model {p}: no such folder; expected a model folder (with "
                            "config.json) or the output folder of a train or compress job")
    if not p.is_dir():
        raise WorkloadError(f"model {p}: not a folder; expected a model folder with config.json")
    for cand in (p, p / "model"):
        if (cand / "config.json").is_file():
            return cand
    raise WorkloadError(f"model {p}: no config.json (in it or in its model/); expected the "
                        "output folder of a train or compress job, or a save_pretrained() folder")


def build_config(preset: str, vocab_size: int, max_positions: int, tokenizer: Any,
                 dropout: float = 0.0, overrides: Mapping[str, int] | None = None) -> Any:
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise WorkloadError(f"model preset {preset!r} is unknown; expected one of "
                            f"{', '.join(PRESETS)} or a model folder")
    fields: dict[str, Any] = {**PRESETS[preset], **(overrides or {})}
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        attention_dropout=dropout,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **fields,
    )


def build_model(config: Any, task: str = "causal-lm", labels: list[str] | None = None) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task == "classification":
        config.num_labels = len(labels or [])
        config.id2label = dict(enumerate(labels or []))
        config.label2id = {n: i for i, n in enumerate(labels or [])}
        return AutoModelForSequenceClassification.from_config(config)
    return AutoModelForCausalLM.from_config(config)


def _meta(folder: Path) -> dict[str, Any]:
    if not (folder / META).exists():
        return {"format": "fp32"}
    return read_json(folder / META, "written with the model; save the model again")


def _task_of(config: Any, meta: Mapping[str, Any]) -> str:
    task = meta.get("task")
    if task in TASKS:
        return str(task)
    arch = (getattr(config, "architectures", None) or [""])[0]
    return "classification" if arch.endswith("ForSequenceClassification") else "causal-lm"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_model(path: str | Path, task: str | None = None,
               labels: list[str] | None = None) -> LoadedModel:
    """Load the model (and its tokenizer) in `path`. `task` "classification"
    on a causal-LM folder starts a classifier from its weights (a new head
    for `labels`). Every failure is a `WorkloadError` naming the folder."""
    import warnings

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from engine.workloads.data import load_tokenizer

    folder = model_folder(path)
    meta = _meta(folder)
    fmt = str(meta.get("format", "fp32"))
    if fmt not in FORMATS:
        raise WorkloadError(f"model {folder}: {META} names format {fmt!r}; expected one of "
                            f"{', '.join(FORMATS)}")
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        raise WorkloadError(f"model {folder}: config.json is not usable ({_first_line(exc)}); "
                            "expected a transformers config") from None
    saved_task = _task_of(config, meta)
    task = task or saved_task
    tokenizer = load_tokenizer(folder)
    names = list(meta.get("labels") or [])
    try:
        if fmt in INT8_FORMATS:
            weights = folder / QUANTIZED_WEIGHTS
            if not weights.is_file():
                raise WorkloadError(f"model {folder}: {QUANTIZED_WEIGHTS} is missing; the int8 "
                                    "model is incomplete: run the quantize pass again")
            if fmt == "int8-fused":
                _check_fused_layout(folder, meta)
            # the same modules as were saved, then their int8 state (packed
            # for this CPU's engine: the saved one may have been another)
            model = build_model(config, saved_task, names)
            model = quantize_int8(model, fuse=fmt == "int8-fused")
            with warnings.catch_warnings():  # TypedStorage deprecation, from torch itself
                warnings.simplefilter("ignore")
                state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        elif task == "classification" and saved_task != "classification":
            names = list(labels or [])
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder), num_labels=len(names), id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)})
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tokenizer.pad_token_id
        else:
            cls = (AutoModelForSequenceClassification if saved_task == "classification"
                   else AutoModelForCausalLM)
            model = cls.from_pretrained(str(folder))
    except WorkloadError:
        raise
    except Exception as exc:  # safetensors, pickle and shape errors have no common base
        raise WorkloadError(f"model {folder}: the weights cannot be loaded ({_first_line(exc)}); "
                            "the folder is corrupt or incomplete: train or copy it again"
                            ) from None
    model.eval()
    return LoadedModel(model, tokenizer, folder, fmt, task, names)


def _check_fused_layout(folder: Path, meta: Mapping[str, Any]) -> None:
    from engine.workloads import int8

    layout = (meta.get("int8") or {}).get("fused")
    if layout != int8.FUSED:
        raise WorkloadError(f"model {folder}: its int8 layout is {layout!r}, this version "
                            f"reads {int8.FUSED!r}; compress the fp32 model again")


def select_int8_engine() -> str:
    """Make this CPU's int8 engine current (`engine.workloads.int8.set_engine`:
    process-wide; packed int8 weights are packed for it)."""
    from engine.workloads import int8

    return int8.set_engine()


def quantize_int8(model: Any, fuse: bool = True) -> Any:
    """`model` made int8 the fastest way this CPU runs it: q/k/v and gate/up
    fused into one Linear each (`fuse`; Llama models only, any head count),
    then dynamic int8 quantization of every nn.Linear (int8 weights,
    activations quantized per call) on the engine chosen for this CPU.
    Its format is INT8_FORMAT ("int8-dynamic" with `fuse` False). CPU only:
    `engine.workloads.int8.quantize_weight_only` is the CUDA path."""
    import copy

    from engine.workloads import int8

    int8.set_engine()
    model = copy.deepcopy(model).to("cpu").float()  # `model` itself is left as it was
    if fuse:
        int8.fuse_projections(model)
    return int8.quantize_dynamic(model)


def runtime(model: Any) -> dict[str, str]:
    """What runs `model`'s forward: ``engine`` (the quantized engine, or
    "aten" for float), ``dtype`` ("int8" or the float dtype), ``attention``
    (the transformers attention implementation) and ``fused`` (the fused
    projection layout, `engine.workloads.int8.FUSED`, or "" for the layers
    as trained: an fp32 baseline loaded by `load_model` is never fused)."""
    import torch

    model = getattr(model, "module", model)
    quantized = any(m.__class__.__module__.startswith("torch.ao.nn.quantized")
                    for m in model.modules())
    if quantized:
        engine, dtype = str(torch.backends.quantized.engine), "int8"
    else:
        first = next(model.parameters(), None)
        engine = "aten"
        dtype = str(first.dtype).replace("torch.", "") if first is not None else "float32"
    config = getattr(model, "config", None)
    attention = str(getattr(config, "_attn_implementation", None) or "eager")
    fused = any(hasattr(m, "qkv_proj") for m in model.modules())
    return {"engine": engine, "dtype": dtype, "attention": attention,
            "fused": _fused_layout() if fused else ""}


def _fused_layout() -> str:
    from engine.workloads import int8

    return int8.FUSED


def save_model(loaded: LoadedModel, folder: Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the model, its tokenizer and ``llmconsole.json`` to a temporary
    folder beside `folder`, then rename it into place (an older one is
    replaced)."""
    import torch

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model = loaded.model
    model = getattr(model, "module", model)
    meta: dict[str, Any] = {}
    if loaded.format in INT8_FORMATS:
        from engine.workloads import int8

        model.config.save_pretrained(str(tmp))
        torch.save(model.state_dict(), tmp / QUANTIZED_WEIGHTS)
        meta["int8"] = {"engine": runtime(model)["engine"], "scheme": "dynamic",
                        "fused": int8.FUSED if loaded.format == "int8-fused" else ""}
    else:
        model.save_pretrained(str(tmp))
    loaded.tokenizer.save_pretrained(str(tmp))
    write_json_atomic(tmp / META, {"format": loaded.format, "task": loaded.task,
                                   "labels": loaded.labels, **meta, **(extra or {})})
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder
