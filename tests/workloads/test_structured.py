"""Structured pruning (`engine.workloads.structured`): layers, key/value head
groups and MLP channels really leave the model, the smaller model saves and
loads back with its updated config, importance finds what was planted as
useless, and ``compress --method structured`` recovers perplexity. Most of
it in-process on a micro Llama with grouped-query attention (4 query heads,
2 key/value groups) built from a config; one subprocess run of the program
on the session's trained micro model."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from tests.workloads.conftest import results, run_workload

LAYERS, HIDDEN, HEADS, KV, WIDTH = 4, 32, 4, 2, 48
HEAD_DIM = HIDDEN // HEADS


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from engine.workloads.data import train_tokenizer

    return train_tokenizer(["structured pruning keeps whole groups together"] * 4, 300)


def micro(tokenizer: Any, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN,
                         intermediate_size=WIDTH, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV,
                         max_position_embeddings=64, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # weights large enough that every part matters
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


def rows(tokenizer: Any, n: int = 8, length: int = 16) -> Any:
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(0, len(tokenizer), (n, length), generator=g)


def save_and_load(model: Any, tokenizer: Any, folder: Path) -> Any:
    from engine.workloads.models import LoadedModel, load_model, save_model

    save_model(LoadedModel(model, tokenizer, None), folder)
    return load_model(folder).model


def test_dropped_layers_leave_the_model_and_its_files_and_act_as_identity(
        tokenizer: Any, tmp_path: Path) -> None:
    import copy

    import torch

    from engine.workloads import structured

    model = micro(tokenizer)
    ids = rows(tokenizer)
    full = save_and_load(copy.deepcopy(model), tokenizer, tmp_path / "full")
    drop = [1, 2]
    per_layer = [sum(p.numel() for p in model.model.layers[i].parameters()) for i in drop]

    # the reference: the original with those layers replaced by identity
    def identity(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any], _out: Any) -> Any:
        return args[0] if args else kwargs["hidden_states"]

    handles = [model.model.layers[i].register_forward_hook(identity, with_kwargs=True)
               for i in drop]
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        expected_gen = model.generate(ids[:2, :5], max_new_tokens=4, do_sample=False,
                                      pad_token_id=tokenizer.pad_token_id)
    for h in handles:
        h.remove()

    before = structured.parameter_count(model)
    pruned = structured.drop_layers(model, drop)
    loaded = save_and_load(pruned, tokenizer, tmp_path / "pruned")
    assert loaded.config.num_hidden_layers == LAYERS - 2 and len(loaded.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in loaded.model.layers] == [0, 1]
    assert structured.parameter_count(loaded) == before - sum(per_layer)
    size = {name: (tmp_path / name / "model.safetensors").stat().st_size
            for name in ("full", "pruned")}
    # fp32: 4 bytes a parameter, plus the header's entry (< 200 bytes) of each tensor
    tensors = sum(len(list(model_layer.parameters())) for model_layer in
                  (full.model.layers[i] for i in drop))
    assert 0 <= size["full"] - size["pruned"] - 4 * sum(per_layer) < 200 * tensors
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-5)
        # the KV cache is indexed by the renumbered layer_idx
        got = loaded.generate(ids[:2, :5], max_new_tokens=4, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(got, expected_gen)
    assert full.config.num_hidden_layers == LAYERS


def test_importance_finds_the_planted_layer_and_prune_structured_leaves_its_input(
        tokenizer: Any) -> None:
    import torch

    from engine.workloads import structured

    model = micro(tokenizer)
    with torch.no_grad():  # layer 2 adds nothing to the residual stream
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    scores = structured.layer_importance(model, rows(tokenizer), 4, 2)
    assert scores[2] == pytest.approx(0, abs=1e-3) and min(scores[:2] + scores[3:]) > 0.01
    pruned, report = structured.prune_structured(model, rows(tokenizer), drop_layers=1,
                                                 batch_size=4, max_batches=2)
    assert report["layers_dropped"] == [2] and report["layer_scores"] == pytest.approx(scores)
    assert len(pruned.model.layers) == 3 and len(model.model.layers) == LAYERS  # a copy
    assert report["parameters_after"] < report["parameters_before"]


def test_heads_and_channels_go_by_group_and_by_importance(tokenizer: Any,
                                                          tmp_path: Path) -> None:
    import torch

    from engine.workloads import structured
    from engine.workloads.common import WorkloadError

    model = micro(tokenizer)
    ids = rows(tokenizer)
    useless = [1, 0, 1, 0]  # the kv group planted as useless, per layer
    dead = list(range(0, WIDTH, 2))  # MLP channels planted as dead, in every layer
    with torch.no_grad():
        for layer, g in zip(model.model.layers, useless, strict=True):
            attn = layer.self_attn
            q = slice(g * 2 * HEAD_DIM, (g + 1) * 2 * HEAD_DIM)  # the group's 2 query heads
            kv = slice(g * HEAD_DIM, (g + 1) * HEAD_DIM)
            attn.q_proj.weight[q] = 0
            attn.k_proj.weight[kv] = 0
            attn.v_proj.weight[kv] = 0
            attn.o_proj.weight[:, q] = 0
            layer.mlp.gate_proj.weight[dead] = 0  # silu(0) * up = 0
        reference = model(input_ids=ids).logits

    heads = structured.head_importance(model, ids, 4, 2)
    assert [min(range(KV), key=s.__getitem__) for s in heads] == useless
    assert all(s[g] == 0 and s[1 - g] > 0 for s, g in zip(heads, useless, strict=True))
    channels = structured.channel_importance(model, ids, 4, 2)
    assert all(max(c[j] for j in dead) == 0 < min(c[j] for j in range(1, WIDTH, 2))
               for c in channels)

    pruned, report = structured.prune_structured(model, ids, keep_heads=0.5, keep_channels=0.5,
                                                 batch_size=4, max_batches=2)
    assert report["kv_groups_kept_per_layer"] == [[1 - g] for g in useless]
    assert report["channels_kept"] == WIDTH // 2
    cfg = pruned.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
            cfg.intermediate_size) == (2, 1, HEAD_DIM, WIDTH // 2)
    for layer in pruned.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        assert attn.q_proj.weight.shape == (2 * HEAD_DIM, HIDDEN)
        assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (HEAD_DIM, HIDDEN)
        assert attn.o_proj.weight.shape == (HIDDEN, 2 * HEAD_DIM)
        assert attn.num_key_value_groups == HEADS // KV  # two query heads per kv head still
        assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (WIDTH // 2, HIDDEN)
        assert mlp.down_proj.weight.shape == (HIDDEN, WIDTH // 2)
    with torch.no_grad():  # only what did nothing was removed: the same outputs
        assert torch.allclose(pruned(input_ids=ids).logits, reference, atol=1e-5)

    loaded = save_and_load(pruned, tokenizer, tmp_path / "model")
    assert loaded.config.num_key_value_heads == 1 and loaded.config.intermediate_size == 24
    mask = torch.ones_like(ids)
    mask[:, :3] = 0  # left padding: masks and rotary positions still work
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids, attention_mask=mask).logits,
                              pruned(input_ids=ids, attention_mask=mask).logits, atol=1e-5)
        assert torch.allclose(loaded(input_ids=ids).logits, reference, atol=1e-5)

    for kwargs, option in (({"keep_heads": 0.2}, "--keep-heads"),
                           ({"keep_channels": 0.001}, "--keep-channels"),
                           ({"drop_layers": LAYERS}, "--drop-layers")):
        with pytest.raises(WorkloadError, match=option):
            structured.prune_structured(model, ids, **kwargs)


def test_compress_structured_recovers_perplexity(
        trained: Path, wl_env: dict[str, str], tmp_path: Path) -> None:
    from engine.workloads.models import load_model

    out = tmp_path / "structured"
    measure = ["--max-docs", "400", "--block-size", "64", "--eval-batches", "4",
               "--latency-repeats", "3"]
    proc = run_workload("compress", [
        "--model", str(trained), "--output", str(out), *measure, "--method", "structured",
        "--drop-layers", "1", "--keep-heads", "0.5", "--keep-channels", "0.5",
        "--recover-steps", "20", "--recover", "distill", "--lr", "3e-3"], wl_env)
    assert "Traceback" not in proc.stderr and "structured: layers 2 -> 1" in proc.stdout
    r = results(out)
    assert r["status"] == "ok" and r["method"] == "structured" and r["recover"] == "distill"
    assert r["perplexity_after_recovery"] < r["perplexity_after_pruning"]
    assert r["perplexity_after_recovery"] == r["after"]["perplexity"]
    assert math.isfinite(r["before"]["perplexity"])
    st = r["structured"]
    assert st["config"] == {"num_hidden_layers": 1, "num_attention_heads": 2,
                            "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 88}
    assert st["parameters_before"] == r["before"]["parameters"]
    assert st["parameters_after"] == r["after"]["parameters"] < 0.6 * st["parameters_before"]
    assert r["size_ratio"] > 1.6 and r["speedup"] > 0  # the speed-up is the bench's to show
    loaded = load_model(out).model  # from_pretrained with the updated config
    assert loaded.config.num_hidden_layers == 1 and loaded.config.intermediate_size == 88



@pytest.mark.parametrize("args, words", [
    (["--keep-heads", "0"], "argument --keep-heads: 0 is out of range"),
    (["--drop-layers", "2"], "--drop-layers 2: the model has 2 decoder layers"),
    ([], "nothing to remove")])
def test_a_bad_structured_request_is_one_error_line_and_exit_2(
        args: list[str], words: str, trained: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (run_main, as the program runs), so no interpreter start."""
    from transformers.utils import logging

    from engine.workloads import compress
    from engine.workloads.common import run_main

    out = tmp_path / "bad"
    monkeypatch.setattr("sys.argv", ["compress", "--model", str(trained), "--output", str(out),
                                     "--method", "structured", *args])
    quiet = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM":
             "false", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    for name, value in quiet.items():  # what main's quiet_libraries sets, undone after
        monkeypatch.setenv(name, os.environ.get(name, value))
    # a subprocess reads HF_HUB_DISABLE_PROGRESS_BARS when it imports transformers;
    # in-process transformers may be imported already
    logging.disable_progress_bar()
    try:
        with pytest.raises(SystemExit) as exit_:
            run_main(compress.main)
    finally:
        logging.enable_progress_bar()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and words in lines[0], lines
    assert not out.exists()
