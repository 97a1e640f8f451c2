"""GGUF writer for Phi-3 and Gemma 2/3: tiny random checkpoints (2 layers, hidden 64) with
tiny-llama-pydoc's byte-level BPE tokenizer, written to f32 GGUF, loaded by llama.cpp, and
its logits at every position compared with PyTorch's."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_LLAMA

from edgeport.errors import UnsupportedError

INSTALL = 'pip install -c constraints.txt -e ".[gguf]"'
try:
    import gguf
    import llama_cpp
except ImportError:
    pytest.skip(f"llama.cpp target not installed: {INSTALL}", allow_module_level=True)

from edgeport.backends.gguf_writer import write_gguf  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (TINY_LLAMA / "tokenizer.json").is_file(), reason=f"{TINY_LLAMA} is absent"
)
VOCAB = 4096  # tiny-llama-pydoc's tokenizer
# 24 tokens: longer than the Gemma test models' 8-token sliding window.
TEXT = (
    "The with statement is used to wrap the execution of a block with methods defined by "
    "a context manager."
)
COMMON: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
GEMMA: dict[str, Any] = {
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "sliding_window": 8,
    "layer_types": ["sliding_attention", "full_attention"],
    "initializer_range": 0.1,  # logits large enough for the soft-caps to bite
}
LONGROPE = {
    "type": "longrope",
    "long_factor": [1.0, 1.2, 1.5, 2.0, 3.0, 4.5, 6.0, 8.0],
    "short_factor": [1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 1.8, 2.0],
}
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "phi3": ("phi3", {"tie_word_embeddings": False, "initializer_range": 0.1}),
    # llama.cpp pads its context to a multiple of 256 and picks the long factors when that
    # exceeds original_max_position_embeddings: 256 lets both sets be tested.
    "phi3-longrope": (
        "phi3",
        {
            "rope_scaling": LONGROPE,
            "original_max_position_embeddings": 256,
            "max_position_embeddings": 1024,
            "initializer_range": 0.1,
        },
    ),
    "gemma2": (
        "gemma2",
        {**GEMMA, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0},
    ),
    "gemma3": (
        "gemma3_text",
        {
            **GEMMA,
            "rope_theta": 1_000_000.0,
            "rope_local_base_freq": 10_000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        },
    ),
    "gemma3-softcap": ("gemma3_text", {**GEMMA, "final_logit_softcapping": 3.0}),
}


def build(folder: Path, name: str, seed: int = 0, **overrides: Any) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, extra = CONFIGS[name]
    # Not named after the model: llama.cpp sets Phi-3 token attributes by general.name and
    # expects Phi-3's own special tokens (<|endoftext|>) when the name says "phi3".
    folder = folder / "checkpoint"
    folder.mkdir(parents=True, exist_ok=True)
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(TINY_LLAMA / file, folder / file)
    config = AutoConfig.for_model(model_type, **{**COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():  # norms away from their initial 1 (0 for Gemma's offsets)
        for key, weights in model.named_parameters():
            if key.endswith("norm.weight"):
                weights.add_(0.2 * torch.randn_like(weights))
    model.save_pretrained(str(folder))
    return folder


def ids(text: str = TEXT) -> list[int]:
    from tokenizers import Tokenizer

    return list(Tokenizer.from_file(str(TINY_LLAMA / "tokenizer.json")).encode(text).ids)


def torch_logits(folder: Path, tokens: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(folder), torch_dtype=torch.float32, attn_implementation="eager"
    )
    with torch.no_grad():
        return np.asarray(model(torch.tensor([tokens])).logits[0].numpy())


def llama_logits(path: Path, tokens: list[int], n_ctx: int = 64) -> np.ndarray:
    model = llama_cpp.Llama(
        model_path=str(path), logits_all=True, n_ctx=n_ctx, n_threads=2, verbose=False
    )
    try:
        model.eval(tokens)
        return np.array(model.scores[: len(tokens)], dtype=np.float32)
    finally:
        model.close()


def compare(folder: Path, path: Path, tokens: list[int], n_ctx: int = 64) -> float:
    ours = llama_logits(path, tokens, n_ctx)
    reference = torch_logits(folder, tokens)
    assert ours.shape == reference.shape == (len(tokens), VOCAB)
    diff = float(np.abs(ours - reference).max())
    assert diff <= 2e-3 * float(np.abs(reference).max()), diff
    assert (ours.argmax(-1) == reference.argmax(-1)).all()
    return diff


def fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()}


@pytest.mark.parametrize("name", ["phi3", "gemma2", "gemma3", "gemma3-softcap"])
def test_f32_gguf_logits_match_pytorch(name: str, tmp_path: Path) -> None:
    folder = build(tmp_path / name, name)
    path = tmp_path / "model.gguf"
    write_gguf(folder, path, "f32")
    tokens = ids()
    assert len(tokens) > GEMMA["sliding_window"]
    compare(folder, path, tokens)


def test_phi3_keeps_qkv_and_gate_up_fused(tmp_path: Path) -> None:
    folder = build(tmp_path / "phi3", "phi3")
    path = tmp_path / "model.gguf"
    write_gguf(folder, path, "f16")
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    # GGUF shapes are innermost first: 64 inputs, q + k + v = 64 + 32 + 32 outputs.
    assert list(tensors["blk.0.attn_qkv.weight"].shape) == [64, 128]
    assert list(tensors["blk.0.ffn_up.weight"].shape) == [64, 256]
    assert "blk.0.ffn_gate.weight" not in tensors and "output.weight" in tensors
    assert fields(path)["phi3.rope.dimension_count"] == 16


def test_phi3_longrope_short_and_long_factors(tmp_path: Path) -> None:
    """llama.cpp picks the short factors at a context up to original_max_position_embeddings
    (256 here) and the long ones beyond it, as PyTorch does by sequence length."""
    folder = build(tmp_path / "phi3", "phi3-longrope")
    path = tmp_path / "model.gguf"
    write_gguf(folder, path, "f32")
    meta = fields(path)
    assert meta["phi3.rope.scaling.type"] == "longrope"
    assert meta["phi3.rope.scaling.original_context_length"] == 256
    assert meta["phi3.rope.scaling.attn_factor"] == pytest.approx(
        float(np.sqrt(1 + np.log(1024 / 256) / np.log(256)))
    )
    names = {t.name for t in gguf.GGUFReader(str(path)).tensors}
    assert {"rope_factors_long.weight", "rope_factors_short.weight"} <= names
    short = ids()
    compare(folder, path, short, n_ctx=256)
    long = ids(" ".join([TEXT] * 14))
    assert 256 < len(long) <= 512
    compare(folder, path, long, n_ctx=512)


def test_gemma_metadata_and_norm_offsets(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    folder = build(tmp_path / "gemma3", "gemma3")
    path = tmp_path / "model.gguf"
    notes = write_gguf(folder, path, "f32")
    meta = fields(path)
    assert meta["gemma3.attention.sliding_window"] == 8
    assert meta["gemma3.attention.sliding_window_pattern"] == [True, False]
    assert meta["gemma3.rope.freq_base"] == 1_000_000.0
    assert meta["gemma3.rope.freq_base_swa"] == 10_000.0
    assert meta["gemma3.rope.scaling.type"] == "linear"
    assert meta["tokenizer.ggml.model"] == "gpt2"
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert "output.weight" not in tensors and any("tied" in note for note in notes)
    weights = load_file(str(folder / "model.safetensors"))
    q_norm = weights["model.layers.0.self_attn.q_norm.weight"].to(torch.float32).numpy()
    np.testing.assert_allclose(tensors["blk.0.attn_q_norm.weight"], q_norm + 1)

    folder2 = build(tmp_path / "gemma2", "gemma2")
    write_gguf(folder2, tmp_path / "gemma2.gguf", "f16")
    meta2 = fields(tmp_path / "gemma2.gguf")
    assert meta2["gemma2.attn_logit_softcapping"] == 5.0
    assert meta2["gemma2.final_logit_softcapping"] == 3.0
    assert meta2["gemma2.attention.sliding_window"] == 8


@pytest.mark.parametrize(
    ("name", "overrides", "words"),
    [
        ("gemma2", {"final_logit_softcapping": None}, "soft-caps"),
        ("gemma3", {"query_pre_attn_scalar": 64}, "query_pre_attn_scalar"),
    ],
)
def test_gemma_configs_llama_cpp_cannot_run_are_refused(
    name: str, overrides: dict[str, Any], words: str, tmp_path: Path
) -> None:
    folder = build(tmp_path / name, name, **overrides)
    with pytest.raises(UnsupportedError) as caught:
        write_gguf(folder, tmp_path / "model.gguf", "f32")
    assert words in str(caught.value) and "\n" not in str(caught.value)
