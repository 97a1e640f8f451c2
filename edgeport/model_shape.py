"""A model's size and attention layout from config.json and safetensors headers alone.

Whether a trillion-parameter mixture of experts fits a device is in its config and the
headers of its weight files (a few MB, against terabytes of weights), so planning reads
nothing else:

- parameters: counted from the headers, with the storage conventions of quantised
  checkpoints undone (compressed-tensors packs eight int4 values in an int32, GPTQ/AWQ
  likewise, MXFP4 two in a byte; scales and zero points are not parameters); estimated
  from config.json when no header can be had without downloading the weights;
- active parameters, what one decoded token reads and so what bounds decode speed: all of
  them, less the routed experts a token skips (experts_per_token of num_experts are used),
  less the encoder towers (vision) and multi-token-prediction heads decoding never runs;
- the KV cache per token, from the attention layout: grouped-query attention keeps keys
  and values per KV head, multi-head latent attention (DeepSeek-V3, Kimi) one compressed
  latent plus the rotary key per layer, sliding-window layers at most their window, and
  linear-attention layers (Gated DeltaNet, Mamba) a constant state instead.

Multimodal wrappers (Kimi K2.5, Qwen3.5) nest the language model in `text_config`.
Nothing here imports more than the standard library and the schemas.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeport.errors import BadInputError
from edgeport.schemas import Experts, ModelDims

# A safetensors header: tensor name -> {"dtype", "shape", "data_offsets"}, and __metadata__.
Header = Mapping[str, Any]

DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "U32": 4,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
}

_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# Where multimodal wrappers keep their language model's config.
_TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config")
_EXPERT_COUNT_KEYS = ("num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts")
_EXPERTS_PER_TOKEN_KEYS = (
    "num_experts_per_tok",
    "num_experts_per_token",
    "experts_per_token",
    "moe_k",
    "moe_topk",
    "n_activated_experts",
)
_SHARED_EXPERT_KEYS = ("num_shared_experts", "n_shared_experts", "moe_num_shared_experts")

# Routed experts, one tensor per expert (`mlp.experts.7.gate_proj.weight`, Mixtral's
# `block_sparse_moe.experts.0.w1.weight`) or fused over all of them (Qwen3.5's 3-D
# `mlp.experts.gate_up_proj`, gpt-oss's `mlp.experts.down_proj_blocks`). Shared experts
# (`shared_experts.`, `shared_expert.`) are used by every token and do not match.
_ROUTED_EXPERT = ".experts."
# Towers a decoded token never runs: image encoders and their projectors, and the
# multi-token-prediction heads of Qwen3.5 (`mtp.`); DeepSeek-V3 numbers its MTP layer
# after the last decoder layer (`model.layers.61.` of 61), which _LAYER_INDEX catches.
_NOT_DECODED = re.compile(
    r"(^|\.)(vision_tower|visual|vision_model|vision_encoder|mm_projector|multi_modal_projector"
    r"|audio_tower|mtp)\."
)
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# Tensors that describe how others are quantised (scales, zero points, shapes, group
# indices): bytes on disk, not parameters.
_QUANTISATION_METADATA = (
    ".weight_scale",
    ".weight_scale_inv",
    ".weight_zero_point",
    ".weight_shape",
    ".weight_global_scale",
    ".weight_g_idx",
    ".input_scale",
    ".input_global_scale",
    "_scales",
    ".scales",
    ".qzeros",
    ".g_idx",
)
# Integer tensors holding several low-bit values each (compressed-tensors, GPTQ, AWQ).
_PACKED_INTEGERS = (".weight_packed", ".qweight")


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file; anything else is a one-line BadInputError.

    Reads the 8-byte length and the header only: a file cut after its header (the test
    caches hold such files) reads the same as a complete one.
    """
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise BadInputError(f"{path}: not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", prefix)
            if length > 100_000_000:
                raise BadInputError(f"{path}: implausible safetensors header")
            header = json.loads(handle.read(length))
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from exc
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise BadInputError(f"{path}: not a safetensors file (malformed header)") from exc
    if not isinstance(header, dict):
        raise BadInputError(f"{path}: not a safetensors file (malformed header)")
    return header


def _int(config: Mapping[str, Any], *keys: str) -> int | None:
    """The first of `keys` that holds an integer (JSON null and booleans are not)."""
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's config: the nested text_config of a multimodal wrapper whose
    top level names no layers (Kimi K2.5, Qwen3.5), else config.json itself."""
    if _int(config, *_LAYER_KEYS) is not None:
        return config
    for key in _TEXT_CONFIG_KEYS:
        nested = config.get(key)
        if isinstance(nested, dict) and _int(nested, *_LAYER_KEYS) is not None:
            return nested
    return config


def experts_of(config: Mapping[str, Any]) -> Experts | None:
    """The mixture of experts a (text) config describes, or None for a dense model."""
    count = _int(config, *_EXPERT_COUNT_KEYS)
    per_token = _int(config, *_EXPERTS_PER_TOKEN_KEYS)
    if count is None or count < 2 or per_token is None or per_token < 1:
        return None
    shared = _int(config, *_SHARED_EXPERT_KEYS) or 0
    # Qwen's MoEs have one shared expert of its own width instead of a count.
    if not shared and (_int(config, "shared_expert_intermediate_size") or 0) > 0:
        shared = 1
    return Experts(
        num_experts=count, experts_per_token=min(per_token, count), num_shared_experts=shared
    )


# ---------------------------------------------------------------------- attention layout

_FULL, _WINDOW, _STATE = "full", "window", "state"
_LAYER_KINDS = {
    "full_attention": _FULL,
    "attention": _FULL,
    "global": _FULL,
    "sliding_attention": _WINDOW,
    "local": _WINDOW,
    "chunked_attention": _WINDOW,
    "linear_attention": _STATE,
    "mamba": _STATE,
    "conv": _STATE,
}


def _layer_kinds(config: Mapping[str, Any], layers: int) -> list[str]:
    """Per layer: keeps every token (full), a window of them, or a constant state."""
    types = config.get("layer_types")
    if isinstance(types, list) and len(types) == layers and all(isinstance(t, str) for t in types):
        return [_LAYER_KINDS.get(t, _FULL) for t in types]  # unknown kinds: assume the most
    interval = _int(config, "full_attention_interval")  # Qwen3-Next, Qwen3.5
    if interval and interval > 0:
        return [_FULL if (i + 1) % interval == 0 else _STATE for i in range(layers)]
    window = _int(config, "sliding_window")
    if window and window > 0 and config.get("use_sliding_window") is not False:
        pattern = _int(config, "sliding_window_pattern")  # Gemma 3: every n-th is global
        if pattern and pattern > 0:
            return [_FULL if (i + 1) % pattern == 0 else _WINDOW for i in range(layers)]
        first = _int(config, "max_window_layers")  # Qwen2: the window from this layer on
        if config.get("use_sliding_window") is True and first is not None:
            return [_WINDOW if i >= first else _FULL for i in range(layers)]
        return [_WINDOW] * layers  # Mistral: every layer
    return [_FULL] * layers


def _head_dim(config: Mapping[str, Any], hidden: int | None, heads: int | None) -> int | None:
    return _int(config, "head_dim") or (hidden // heads if hidden and heads else None)


def _linear_state_elements(config: Mapping[str, Any]) -> int:
    """One Gated DeltaNet layer's recurrent state (a key x value matrix per value head)
    and its convolution's last inputs; 0 where the config does not say."""
    value_heads = _int(config, "linear_num_value_heads")
    key_heads = _int(config, "linear_num_key_heads") or value_heads
    key_dim = _int(config, "linear_key_head_dim")
    value_dim = _int(config, "linear_value_head_dim")
    if not (value_heads and key_heads and key_dim and value_dim):
        return 0
    kernel = _int(config, "linear_conv_kernel_dim") or 4
    conv_channels = 2 * key_heads * key_dim + value_heads * value_dim
    return value_heads * key_dim * value_dim + conv_channels * (kernel - 1)


def model_dims(config: Mapping[str, Any]) -> ModelDims:
    """Dimensions and KV layout of a model's (text) config."""

    def first(*keys: str) -> int | None:
        return _int(config, *keys)

    heads = first("num_attention_heads", "n_head", "num_heads")
    hidden = first("hidden_size", "n_embd", "d_model", "dim")
    head_dim = _head_dim(config, hidden, heads)
    layers = first(*_LAYER_KEYS)
    kv_heads = first("num_key_value_heads", "multi_query_group_num") or heads
    dims = ModelDims(
        hidden_size=hidden,
        num_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=first("vocab_size"),
        max_positions=first("max_position_embeddings", "n_positions", "max_seq_len"),
    )
    kv_lora = first("kv_lora_rank")
    if kv_lora:  # multi-head latent attention: one latent and the rotary key per layer
        per_layer = kv_lora + (first("qk_rope_head_dim") or 64)
        label = "mla"
    elif kv_heads and head_dim:
        per_layer = 2 * kv_heads * head_dim
        label = "gqa"
    else:
        return dims  # no layout to read: the planner falls back to its defaults
    if not layers:
        return dims
    kinds = _layer_kinds(config, layers)
    full = kinds.count(_FULL)
    windowed = kinds.count(_WINDOW)
    stateful = kinds.count(_STATE)
    window = first("sliding_window", "attention_chunk_size") if windowed else None
    if windowed and not window:  # a windowed layer without a window keeps every token
        full, windowed = full + windowed, 0
    label += "+sliding" if windowed else ""
    label += "+linear" if stateful else ""
    return dims.model_copy(
        update={
            "attention": label,
            "kv_elements_per_token": full * per_layer,
            "window_kv_elements_per_token": windowed * per_layer,
            "sliding_window": window if windowed else None,
            "state_elements": stateful * _linear_state_elements(config),
        }
    )


def kv_cache_elements(dims: ModelDims, context: int) -> float:
    """KV cache elements (and recurrent state) a model holds with `context` tokens: the
    one formula the planner and the families use, times the runtime's element size.

    Dimensions without a layout (built by hand, or by a family for a tower) count every
    layer as grouped-query attention, with BERT-base's sizes where a number is missing.
    """
    if dims.kv_elements_per_token is None:
        heads = dims.num_attention_heads or 12
        head_dim = dims.head_dim or (dims.hidden_size or 768) // heads
        kv_heads = dims.num_key_value_heads or heads
        return 2.0 * (dims.num_layers or 12) * kv_heads * head_dim * context
    window = min(context, dims.sliding_window or context)
    return float(
        dims.kv_elements_per_token * context
        + dims.window_kv_elements_per_token * window
        + dims.state_elements
    )


def kv_elements_per_token(dims: ModelDims) -> float:
    """What one more token adds to the cache while the context is within every window."""
    return kv_cache_elements(dims, 1) - kv_cache_elements(dims, 0)


# ---------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class WeightCount:
    """Parameters and bytes of a checkpoint, from its safetensors headers."""

    total: int
    active: int
    stored_bytes: int
    dtype: str  # the dtype most parameters are stored in


def _packed_bits(config: Mapping[str, Any]) -> int:
    """Bits per value in packed integer tensors, from the quantisation config (4 when it
    does not say: every packed format in use packs int4)."""
    quantization = config.get("quantization_config")
    if not isinstance(quantization, dict):
        nested = text_config(config).get("quantization_config")
        quantization = nested if isinstance(nested, dict) else {}
    bits = _int(quantization, "bits", "num_bits")
    if bits:
        return bits
    groups = quantization.get("config_groups")
    if isinstance(groups, dict):
        for group in groups.values():
            weights = group.get("weights") if isinstance(group, dict) else None
            if isinstance(weights, dict) and _int(weights, "num_bits"):
                return int(weights["num_bits"])
    return 4


def _parameters(name: str, dtype: str, elements: int, bits: int) -> int:
    """Parameters a stored tensor holds."""
    if name.endswith(_QUANTISATION_METADATA):
        return 0
    if name.endswith(_PACKED_INTEGERS) and dtype in {"I32", "U32"}:
        return elements * (32 // bits)
    if name.endswith("_blocks") and dtype == "U8":  # MXFP4: two 4-bit values per byte
        return elements * 2
    return elements


def count_weights(headers: Iterable[tuple[str, Header]], config: Mapping[str, Any]) -> WeightCount:
    """Total and active parameters, bytes and dominant dtype of `(file, header)` pairs."""
    text = text_config(config)
    experts = experts_of(text)
    # DeepSeek-V3 numbers its multi-token-prediction layers after the decoder's last one.
    decoder_layers = _int(text, *_LAYER_KEYS) if _int(text, "num_nextn_predict_layers") else None
    bits = _packed_bits(config)
    total = 0
    active = 0.0
    size = 0
    dtype_counts: dict[str, int] = {}
    for source, header in headers:
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            try:
                elements = 1
                for dim in entry["shape"]:
                    elements *= int(dim)
                dtype = str(entry["dtype"])
            except (KeyError, TypeError, ValueError) as exc:
                raise BadInputError(f"{source}: malformed safetensors header entry") from exc
            size += elements * DTYPE_BYTES.get(dtype, 4)
            dtype_counts[dtype] = dtype_counts.get(dtype, 0) + elements
            parameters = _parameters(name, dtype, elements, bits)
            total += parameters
            layer = _LAYER_INDEX.search(name) if decoder_layers else None
            if _NOT_DECODED.search(name) or (layer and int(layer[1]) >= (decoder_layers or 0)):
                continue
            if experts and _ROUTED_EXPERT in name:
                active += parameters * experts.experts_per_token / experts.num_experts
            else:
                active += parameters
    dominant = max(dtype_counts, key=lambda key: dtype_counts[key]) if dtype_counts else "F32"
    return WeightCount(total, round(active), size, dominant)


def estimate_parameters(config: Mapping[str, Any]) -> tuple[int, int]:
    """(total, active) parameters from a decoder's config alone: the matrices of the
    embeddings, attention (grouped-query, latent or linear), dense and expert MLPs.

    The fallback when the headers cannot be read without downloading the weights (a
    cache holding config.json only, offline); norms and biases are left out.
    """
    text = text_config(config)
    hidden = _int(text, "hidden_size", "n_embd", "d_model") or 0
    layers = _int(text, *_LAYER_KEYS) or 0
    vocab = _int(text, "vocab_size") or 0
    heads = _int(text, "num_attention_heads", "n_head") or 0
    kv_heads = _int(text, "num_key_value_heads") or heads
    head_dim = _head_dim(text, hidden, heads) or 0
    tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    embeddings = vocab * hidden * (1 if tied else 2)

    kv_lora = _int(text, "kv_lora_rank")
    if kv_lora:
        q_lora = _int(text, "q_lora_rank") or 0
        nope = _int(text, "qk_nope_head_dim") or 128
        rope = _int(text, "qk_rope_head_dim") or 64
        value = _int(text, "v_head_dim") or 128
        query = (
            hidden * q_lora + q_lora * heads * (nope + rope)
            if q_lora
            else (hidden * heads * (nope + rope))
        )
        attention = (
            query
            + hidden * (kv_lora + rope)
            + kv_lora * heads * (nope + value)
            + heads * value * hidden
        )
    else:
        gate = 2 if text.get("attn_output_gate") else 1  # Qwen3.5 gates its attention output
        attention = hidden * heads * head_dim * (gate + 1) + 2 * hidden * kv_heads * head_dim
    value_heads = _int(text, "linear_num_value_heads") or 0
    key_heads = _int(text, "linear_num_key_heads") or value_heads
    key_dim = (_int(text, "linear_key_head_dim") or 0) * key_heads
    value_dim = (_int(text, "linear_value_head_dim") or 0) * value_heads
    linear = hidden * (2 * key_dim + 2 * value_dim + 2 * value_heads) + value_dim * hidden

    experts = experts_of(text)
    dense_mlp = 3 * hidden * (_int(text, "intermediate_size") or 4 * hidden)
    expert_width = _int(text, "moe_intermediate_size") or 0
    shared_width = _int(text, "shared_expert_intermediate_size") or expert_width
    first_dense = _int(text, "first_k_dense_replace") or 0
    step = _int(text, "moe_layer_freq", "decoder_sparse_step") or 1
    dense_only = text.get("mlp_only_layers") or []
    kinds = _layer_kinds(text, layers)

    total = active = embeddings
    for index in range(layers):
        mixer = linear if kinds[index] == _STATE and linear else attention
        total += mixer
        active += mixer
        sparse = (
            experts is not None
            and index >= first_dense
            and (index + 1) % step == 0
            and index not in dense_only
        )
        if not sparse or experts is None:
            total += dense_mlp
            active += dense_mlp
            continue
        routed = experts.num_experts * 3 * hidden * expert_width
        fixed = (
            experts.num_shared_experts * 3 * hidden * shared_width + experts.num_experts * hidden
        )
        total += routed + fixed
        active += fixed + routed * experts.experts_per_token // experts.num_experts
    return total, active


# ---------------------------------------------------------------------- the whole shape

# Architecture suffixes of models that generate token by token through a KV cache.
_DECODER_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


@dataclass(frozen=True)
class ModelShape:
    parameters_total: int
    parameters_active: int
    stored_bytes: int  # the checkpoint's bytes as stored (0 when estimated)
    dtype: str
    experts: Experts | None
    dims: ModelDims
    decodes: bool  # generates through a KV cache: its cache counts
    from_headers: bool


def decodes(config: Mapping[str, Any]) -> bool:
    """A decoder-only generator (encoder-decoders keep other caches; encoders none)."""
    if config.get("is_encoder_decoder"):
        return False
    architectures = config.get("architectures") or []
    return isinstance(architectures, list) and any(
        isinstance(name, str) and name.endswith(_DECODER_SUFFIXES) for name in architectures
    )


def model_shape(config: Mapping[str, Any], headers: Mapping[str, Header] | None) -> ModelShape:
    """Everything the fit check needs: from the headers when given, else config.json."""
    text = text_config(config)
    dims = model_dims(text)
    experts = experts_of(text)
    if headers is not None:
        count = count_weights(sorted(headers.items()), config)
        total, active, size, dtype = count.total, count.active, count.stored_bytes, count.dtype
    else:
        total, active = estimate_parameters(config)
        dtype = str(text.get("torch_dtype") or config.get("torch_dtype") or "unknown")
        size = 0
    return ModelShape(
        parameters_total=total,
        parameters_active=active,
        stored_bytes=size,
        dtype=dtype,
        experts=experts,
        dims=dims,
        decodes=decodes(config),
        from_headers=headers is not None,
    )


# ---------------------------------------------------------------------- words for people


def count_words(count: float) -> str:
    """1.03 T, 32.9 B, 22.7 M: parameter counts as people say them."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            value = count / scale
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"
    return f"{count:.0f}"


def bytes_words(size: float) -> str:
    """Sizes in the binary units edgeport's reports call MB, GB and TB."""
    for scale, unit in ((1024.0**4, "TB"), (1024.0**3, "GB"), (1024.0**2, "MB"), (1024.0, "KB")):
        if size >= scale:
            value = size / scale
            return f"{value:.2f} {unit}" if value < 10 else f"{value:,.1f} {unit}"
    return f"{size:.0f} bytes"
