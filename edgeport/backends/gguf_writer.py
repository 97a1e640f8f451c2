"""Hugging Face checkpoint -> GGUF (f32, f16, bf16), through the `gguf` package.

Tensor names come from gguf's own name maps (`get_tensor_name_map`), metadata keys from
its `GGUFWriter.add_*` methods, special tokens, merges and the chat template from its
`SpecialVocab`: the parts of llama.cpp's converter that ship as a library. What lives
only in `convert_hf_to_gguf.py` (not installable) is done here, following it: Llama's
q/k rows are permuted back to llama.cpp's rotary layout, 1-D tensors and norms stay f32,
a GPT-2 style BPE vocabulary is written from tokenizer.json with its special tokens
marked as control tokens, and the pre-tokenizer is named from tokenizer.json's regex.
Phi-3 (`Phi3MiniModel`) keeps its fused qkv_proj/gate_up_proj as `attn_qkv`/`ffn_up` and
writes LongRoPE's factors as `rope_factors_long/short`; Gemma 2 and 3 (`Gemma2Model`,
`Gemma3Model`) add 1 to every RMSNorm weight (HF's `x * (1 + w)`), Gemma 2 drops `lm_head`
and writes its soft-capping, both write the sliding window (and, from `layer_types`, which
layers slide), Gemma 3 its local RoPE base.

Supported: Llama (and Mistral, which llama.cpp converts as Llama), Qwen2, Qwen3, Phi-3,
Gemma 2 and Gemma 3 (text only). Any other architecture is an UnsupportedError naming what
is known.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgeport.errors import UnsupportedError

if TYPE_CHECKING:
    import numpy as np
    import torch

OutType = Literal["f32", "f16", "bf16"]


@dataclass(frozen=True)
class _Arch:
    name: str  # gguf.MODEL_ARCH member name
    permute_qk: bool = False  # llama.cpp's Llama graph wants q/k rows in its RoPE order
    norm_offset: bool = False  # Gemma's RMSNorm scales by (1 + w): llama.cpp wants 1 + w


ARCHITECTURES: dict[str, _Arch] = {
    "LlamaForCausalLM": _Arch("LLAMA", permute_qk=True),
    "MistralForCausalLM": _Arch("LLAMA", permute_qk=True),
    "Qwen2ForCausalLM": _Arch("QWEN2"),
    "Qwen3ForCausalLM": _Arch("QWEN3"),
    "Phi3ForCausalLM": _Arch("PHI3"),
    "Gemma2ForCausalLM": _Arch("GEMMA2", norm_offset=True),
    "Gemma3ForCausalLM": _Arch("GEMMA3", norm_offset=True),
}
# Known to llama.cpp, not (yet) to this writer: named in the error so users know why.
_NOT_YET = {
    "Gemma3ForConditionalGeneration": "the vision tower goes to a separate mmproj GGUF",
}

# tokenizer.json pre-tokenizer regexes -> llama.cpp's `tokenizer.ggml.pre` names.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_BY_REGEX = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}


def supported_architectures() -> tuple[str, ...]:
    return tuple(ARCHITECTURES)


def architecture_of(config: dict[str, Any]) -> str:
    """The checkpoint's architecture, or an UnsupportedError when the writer lacks it."""
    architectures = config.get("architectures") or []
    arch = str(architectures[0]) if architectures else str(config.get("model_type", "?"))
    if arch in ARCHITECTURES:
        return arch
    why = f" ({_NOT_YET[arch]} not written yet)" if arch in _NOT_YET else ""
    raise UnsupportedError(
        f"the GGUF writer does not know {arch}{why}; it writes {', '.join(ARCHITECTURES)}"
    )


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UnsupportedError(f"no config.json in {model_dir}")
    config = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise UnsupportedError(f"{path} is not a JSON object")
    return config


def _checkpoint_tensors(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the safetensors checkpoint, one file at a time."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UnsupportedError(
            f"no .safetensors weights in {model_dir} (the GGUF writer reads only those)"
        )
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                yield name, handle.get_tensor(name)


def permute_rows(weights: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotate-half q/k layout -> llama.cpp's interleaved pairs (convert_hf_to_gguf)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _to_numpy(tensor: torch.Tensor, qtype: Any) -> np.ndarray:
    import gguf
    import torch

    if qtype == gguf.GGMLQuantizationType.F16:
        return tensor.to(torch.float16).numpy()
    if qtype == gguf.GGMLQuantizationType.BF16:
        # gguf stores bf16 as uint16 words; quants.quantize converts from f32.
        return gguf.quants.quantize(tensor.to(torch.float32).numpy(), qtype)
    return tensor.to(torch.float32).numpy()


def _longrope(
    writer: Any, config: dict[str, Any], scaling: dict[str, Any], rope_dims: int
) -> Iterator[tuple[str, Any]]:
    """Phi-3's LongRoPE (Phi3MiniModel.generate_extra_tensors): type, attention factor and
    the long/short frequency factors as `rope_factors_long/short` (llama.cpp picks one by
    the context length it runs at, against `rope.scaling.original_context_length`)."""
    import gguf
    import torch

    kind = str(scaling.get("rope_type") or scaling.get("type") or "").lower()
    long_factors = scaling["long_factor"]
    short_factors = scaling.get("short_factor")
    if not short_factors or len(long_factors) != len(short_factors):
        raise UnsupportedError("Phi-3 rope_scaling needs long_factor and short_factor alike")
    if len(long_factors) * 2 != rope_dims:
        raise UnsupportedError(
            f"Phi-3 rope_scaling has {len(long_factors)} factors for {rope_dims} rotary dims"
        )
    longest = int(config.get("max_position_embeddings") or 4096)
    original = _original_context(config)
    scale = longest / original
    if kind in {"su", "longrope"}:
        attn_factor = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0
        writer.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    elif kind == "yarn":
        attn_factor = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
    else:
        raise UnsupportedError(f"the GGUF writer does not handle Phi-3 rope_scaling {kind!r}")
    explicit = scaling.get("attention_factor")
    writer.add_rope_scaling_attn_factors(float(explicit) if explicit else attn_factor)
    names = gguf.TENSOR_NAMES
    yield (
        names[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight",
        torch.tensor(long_factors, dtype=torch.float32),
    )
    yield (
        names[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight",
        torch.tensor(short_factors, dtype=torch.float32),
    )


def _original_context(config: dict[str, Any]) -> int:
    scaling = config.get("rope_scaling") or {}
    return int(
        scaling.get("original_max_position_embeddings")
        or config.get("original_max_position_embeddings")
        or config.get("max_position_embeddings")
        or 4096
    )


def _rope(
    writer: Any, config: dict[str, Any], head_dim: int, arch: str = "LLAMA"
) -> Iterator[tuple[str, Any]]:
    """RoPE scaling metadata; Llama 3's frequency factors as the extra `rope_freqs` tensor,
    Phi-3's LongRoPE factors as `rope_factors_long/short`."""
    import gguf
    import torch

    scaling = config.get("rope_scaling") or {}
    kind = str(scaling.get("rope_type") or scaling.get("type") or "")
    if arch == "PHI3" and scaling.get("long_factor"):
        yield from _longrope(writer, config, scaling, head_dim)
        return
    if not kind or kind == "default":
        return
    factor = scaling.get("factor")
    if kind == "linear" and factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
        return
    if kind == "llama3":
        base = float(config.get("rope_theta", 10000.0))
        freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        factor = float(scaling.get("factor", 8.0))
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old = float(scaling.get("original_max_position_embeddings", 8192))
        factors = []
        for freq in freqs.tolist():
            wavelen = 2 * math.pi / freq
            if wavelen < old / high:
                factors.append(1.0)
            elif wavelen > old / low:
                factors.append(factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        yield "rope_freqs.weight", torch.tensor(factors, dtype=torch.float32)
        return
    raise UnsupportedError(f"the GGUF writer does not handle rope_scaling type {kind!r}")


def _pre_tokenizer(tokenizer: dict[str, Any]) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer.json."""
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in steps:
        if step.get("type") == "Split":
            regex = (step.get("pattern") or {}).get("Regex")
            if regex in _PRE_BY_REGEX:
                return _PRE_BY_REGEX[regex]
        if step.get("type") == "ByteLevel" and step.get("use_regex", True) and len(steps) == 1:
            return "gpt-2"
    return "default"


def _bpe_vocab(writer: Any, tokenizer: dict[str, Any], vocab_size: int) -> list[str]:
    """GPT-2 style byte-level BPE from tokenizer.json (convert_hf_to_gguf's get_vocab_base)."""
    import gguf

    notes = []
    vocab: dict[str, int] = dict(tokenizer["model"]["vocab"])
    added = {int(t["id"]): t for t in tokenizer.get("added_tokens") or []}
    for token_id, token in added.items():
        vocab.setdefault(str(token["content"]), token_id)
    reverse = {token_id: text for text, token_id in vocab.items()}
    if reverse and max(reverse) >= vocab_size:
        raise UnsupportedError(
            f"tokenizer.json has token id {max(reverse)} beyond the model's {vocab_size} rows"
        )
    tokens: list[str] = []
    types: list[int] = []
    for token_id in range(vocab_size):
        if token_id not in reverse:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        text = reverse[token_id]
        if token_id in added:
            special = bool(added[token_id].get("special")) or (
                text.startswith("<|") and text.endswith("|>")
            )
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(text)
    pre = _pre_tokenizer(tokenizer)
    if pre == "default":
        notes.append(
            "GGUF tokenizer: pre-tokenizer not recognised, llama.cpp's default regex is used; "
            "run.py's tokenisation may differ from tokenizer.json on unusual text"
        )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    return notes


def _vocab(
    writer: Any, model_dir: Path, vocab_size: int, add_space_prefix: bool = True
) -> list[str]:
    import gguf

    path = model_dir / "tokenizer.json"
    notes: list[str] = []
    tokenizer = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    model = (tokenizer or {}).get("model") or {}
    decoder = (tokenizer or {}).get("decoder") or {}
    if (
        tokenizer is not None
        and model.get("type") == "BPE"
        and not model.get("byte_fallback")
        and decoder.get("type") == "ByteLevel"
    ):
        notes += _bpe_vocab(writer, tokenizer, vocab_size)
    elif (model_dir / "tokenizer.model").is_file() or tokenizer is not None:
        # SentencePiece (Llama 2, Mistral): gguf's own vocab readers.
        try:
            vocab: Any = (
                gguf.vocab.SentencePieceVocab(model_dir)
                if (model_dir / "tokenizer.model").is_file()
                else gguf.vocab.LlamaHfVocab(model_dir)
            )
        except (ImportError, FileNotFoundError, TypeError, ValueError) as exc:
            raise UnsupportedError(f"the GGUF writer cannot read this tokenizer: {exc}") from exc
        tokens, scores, types = [], [], []
        for text, score, kind in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(kind)
        while len(tokens) < vocab_size:
            tokens.append(f"[PAD{len(tokens)}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        if not add_space_prefix:
            writer.add_add_space_prefix(False)  # Gemma's SentencePiece adds no dummy prefix
        writer.add_token_list(tokens[:vocab_size])
        writer.add_token_scores(scores[:vocab_size])
        writer.add_token_types(types[:vocab_size])
    else:
        raise UnsupportedError(f"no tokenizer.json or tokenizer.model in {model_dir}")
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)
    return notes


_EXTRA_TENSORS = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}


def _phi3(writer: Any, config: dict[str, Any], notes: list[str]) -> int:
    """Phi3MiniModel.set_gguf_parameters; returns the rotary dimension count."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    rope_dims = int(float(config.get("partial_rotary_factor") or 1.0) * hidden) // heads
    writer.add_rope_scaling_orig_ctx_len(_original_context(config))
    writer.add_rope_dimension_count(rope_dims)
    window = config.get("sliding_window")
    # llama.cpp reads 0 as "no window" (Phi-4); for Phi-3 it ignores the window anyway.
    writer.add_sliding_window(int(window or 0))
    longest = int(config.get("max_position_embeddings") or 4096)
    if window and int(window) < longest:
        notes.append(
            f"GGUF Phi-3: llama.cpp disables the {int(window)}-token sliding window; "
            f"beyond {int(window)} tokens of context it attends further back than PyTorch"
        )
    return rope_dims


def _sliding_layers(config: dict[str, Any], layers: int) -> list[bool]:
    """Which layers use sliding-window attention: HF's `layer_types`, else its pattern."""
    kinds = config.get("layer_types")
    if isinstance(kinds, list) and len(kinds) == layers:
        return [kind == "sliding_attention" for kind in kinds]
    pattern = int(
        config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or 2
    )
    return [bool((i + 1) % pattern) for i in range(layers)]


def _gemma(writer: Any, config: dict[str, Any], arch: str, head_dim: int) -> None:
    """Gemma2Model / Gemma3Model.set_gguf_parameters, plus which layers slide."""
    layers = int(config["num_hidden_layers"])
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    # llama.cpp scales queries by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the 27B
    # models (46 layers for Gemma 2, 62 for Gemma 3): HF's query_pre_attn_scalar must agree.
    scalar = config.get("query_pre_attn_scalar")
    big = layers == (46 if arch == "GEMMA2" else 62)
    expected = hidden // heads if big else head_dim
    if scalar is not None and float(scalar) != float(expected):
        raise UnsupportedError(
            f"llama.cpp scales {arch.title()} queries by 1/sqrt({expected}), this checkpoint "
            f"by 1/sqrt({scalar}) (query_pre_attn_scalar)"
        )
    attn_cap = config.get("attn_logit_softcapping")
    final_cap = config.get("final_logit_softcapping")
    if arch == "GEMMA2":
        if attn_cap is None or final_cap is None:
            raise UnsupportedError(
                "llama.cpp always soft-caps Gemma 2's attention and final logits; this "
                "checkpoint sets attn_logit_softcapping or final_logit_softcapping to null"
            )
        writer.add_attn_logit_softcapping(float(attn_cap))
        writer.add_final_logit_softcapping(float(final_cap))
    else:
        if attn_cap is not None:
            raise UnsupportedError("llama.cpp's Gemma 3 has no attention logit soft-capping")
        if final_cap:
            writer.add_final_logit_softcapping(float(final_cap))
        local_base = config.get("rope_local_base_freq")
        if local_base is not None:
            writer.add_rope_freq_base_swa(float(local_base))
    sliding = _sliding_layers(config, layers)
    window = config.get("sliding_window")
    if any(sliding) and window:
        writer.add_sliding_window(int(window))
        writer.add_sliding_window_pattern(sliding)
    elif arch == "GEMMA2":
        raise UnsupportedError("llama.cpp's Gemma 2 needs sliding-window layers")


def write_gguf(model_dir: Path, out: Path, outtype: OutType = "f16") -> list[str]:
    """Write `model_dir`'s checkpoint to the GGUF file `out`; returns notes for the manifest."""
    import gguf
    import torch

    config = read_config(model_dir)
    arch_name = architecture_of(config)
    spec = ARCHITECTURES[arch_name]
    arch = getattr(gguf.MODEL_ARCH, spec.name)
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    vocab_size = int(config["vocab_size"])
    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    }[outtype]
    qtype = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
    }[outtype]

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    notes: list[str] = []
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(model_dir.name)
        writer.add_block_count(layers)
        writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
        writer.add_embedding_length(hidden)
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        if "head_dim" in config:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        rope_dims = head_dim
        if spec.name == "LLAMA":
            writer.add_vocab_size(vocab_size)
            writer.add_rope_dimension_count(head_dim)
        elif spec.name == "PHI3":
            rope_dims = _phi3(writer, config, notes)
        elif spec.name in {"GEMMA2", "GEMMA3"}:
            _gemma(writer, config, spec.name, head_dim)
        writer.add_file_type(ftype)
        extra = list(_rope(writer, config, rope_dims, spec.name))
        notes += _vocab(writer, model_dir, vocab_size, add_space_prefix=not spec.norm_offset)

        names = gguf.get_tensor_name_map(arch, layers)
        for name, tensor in [*extra, *_checkpoint_tensors(model_dir)]:
            if name.endswith(".rotary_emb.inv_freq"):
                continue
            if spec.name == "GEMMA2" and name == "lm_head.weight":
                continue  # Gemma2Model: llama.cpp reads the output head from token_embd
            if name in _EXTRA_TENSORS:
                new_name = name
            else:
                mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if mapped is None:
                    raise UnsupportedError(
                        f"the GGUF writer cannot map tensor {name!r} ({arch_name})"
                    )
                new_name = mapped
            if spec.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
                tensor = permute_rows(tensor, heads)
            elif spec.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
                tensor = permute_rows(tensor, kv_heads)
            if spec.norm_offset and name.endswith("norm.weight"):
                tensor = tensor.to(torch.float32) + 1  # Gemma's RMSNorm: x * (1 + w)
            kind = (
                gguf.GGMLQuantizationType.F32
                if tensor.dim() <= 1 or new_name.endswith("_norm.weight")
                else qtype
            )
            writer.add_tensor(new_name, _to_numpy(tensor, kind), raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tied = bool(config.get("tie_word_embeddings", spec.norm_offset))
    if tied:
        notes.append("GGUF: lm_head tied to token_embd (one matrix, as llama.cpp reads it)")
    return notes
