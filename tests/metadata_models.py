"""Hugging Face cache entries of giant published models, holding only what planning reads.

Each entry is laid out as huggingface_hub's cache keeps a snapshot (models--ORG--NAME/
refs/main and snapshots/COMMIT/, plain files as in ../shared/hf-cache) and holds the
published config.json, a generation_config.json, the model.safetensors.index.json and
every weight file cut after its header: the tensor names, dtypes and shapes of the real
checkpoint, generated from the config, and no tensor data. A plan that read one weight
would fail on them; nothing here is committed, the tests write the entries at run time.

Where the numbers come from (the Hub itself cannot be reached from here):
- inclusionAI/Ling-1T (BailingMoeV2, custom code): dimensions from the GGUF metadata of
  the converted checkpoint quoted in ikawrakow/ik_llama.cpp issue #873 (n_embd 8192,
  80 layers, 64 heads, 8 KV heads of 128, n_ff 18432, 256 experts, 8 used, rope base
  600000, 32768 original context); the other keys are BailingMoeV2Config's defaults as
  shipped with Ling-mini-2.0 (one shared expert, 157184 tokens, 8 groups, sigmoid routing,
  half-rotary). moe_intermediate_size 2048 and first_k_dense_replace 4 are not in those
  sources: with them the count is 999.7 B, the total published for Ling-1T and Ring-1T
  (same shape), where other values miss it by tens of billions.
- moonshotai/Kimi-K2.5: config.json and the tensor list (compressed-tensors int4 routed
  experts, group 32, packed in int32; bf16 elsewhere; MoonViT vision tower) from a
  report of the checkpoint's files (a public dump of its config and 64 weight files).
- Qwen/Qwen3.5-397B-A17B: text dimensions from its config.json as quoted in public code
  (hidden 4096, 60 layers, 32 heads, 2 KV heads of 256, 512 experts, 10 routed + 1
  shared of 1024, full attention every 4th layer, Gated DeltaNet with 16 key and 64
  value heads of 128); fused expert tensors (`mlp.experts.gate_up_proj`) and the MTP
  head as Qwen3.5 checkpoints store them. The vision tower follows Qwen3-VL's (27 blocks
  of 1152), and the shard count (5 GB shards, Qwen's convention) is not published in our
  sources.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Tensor = tuple[str, str, tuple[int, ...]]  # name, safetensors dtype, shape
_BYTES = {"BF16": 2, "F32": 4, "I32": 4}


@dataclass(frozen=True)
class PublishedModel:
    repo_id: str
    config: dict[str, Any]
    generation_config: dict[str, Any]
    tensors: Callable[[dict[str, Any]], Iterator[Tensor]]
    shards: int | None  # None: as many 5 GB shards as the weights need
    shard_digits: tuple[int, int] = (5, 5)  # Kimi names its files model-00001-of-000064
    published_total: float = 0.0  # parameters, as the model card says
    published_active: float = 0.0

    @property
    def commit(self) -> str:
        return hashlib.sha1(self.repo_id.encode()).hexdigest()

    @property
    def cache_folder(self) -> str:
        return "models--" + self.repo_id.replace("/", "--")


# ---------------------------------------------------------------------- Ling-1T

LING_1T_CONFIG: dict[str, Any] = {
    "architectures": ["BailingMoeV2ForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_bailing_moe_v2.BailingMoeV2Config",
        "AutoModel": "modeling_bailing_moe_v2.BailingMoeV2Model",
        "AutoModelForCausalLM": "modeling_bailing_moe_v2.BailingMoeV2ForCausalLM",
    },
    "model_type": "bailing_moe_v2",
    "attention_dropout": 0.0,
    "embedding_dropout": 0.0,
    "output_dropout": 0.0,
    "eos_token_id": 156892,
    "pad_token_id": 156892,
    "first_k_dense_replace": 4,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 8192,
    "initializer_range": 0.02,
    "intermediate_size": 18432,
    "max_position_embeddings": 32768,
    "max_window_layers": 80,
    "moe_intermediate_size": 2048,
    "moe_router_enable_expert_bias": True,
    "n_group": 8,
    "topk_group": 4,
    "norm_topk_prob": True,
    "num_attention_heads": 64,
    "num_experts": 256,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "num_nextn_predict_layers": 0,
    "num_shared_experts": 1,
    "output_router_logits": False,
    "partial_rotary_factor": 0.5,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 600000,
    "routed_scaling_factor": 2.5,
    "router_dtype": "fp32",
    "score_function": "sigmoid",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_bias": False,
    "use_cache": True,
    "use_qk_norm": True,
    "use_qkv_bias": False,
    "vocab_size": 157184,
}


def _ling_tensors(config: dict[str, Any]) -> Iterator[Tensor]:
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    heads, kv, head = config["num_attention_heads"], config["num_key_value_heads"], 128
    dense, width = config["intermediate_size"], config["moe_intermediate_size"]
    experts = config["num_experts"]
    yield "model.word_embeddings.weight", "BF16", (vocab, hidden)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", "BF16", (hidden,)
        yield p + "post_attention_layernorm.weight", "BF16", (hidden,)
        yield p + "attention.query_key_value.weight", "BF16", ((heads + 2 * kv) * head, hidden)
        yield p + "attention.dense.weight", "BF16", (hidden, heads * head)
        yield p + "attention.query_layernorm.weight", "BF16", (head,)
        yield p + "attention.key_layernorm.weight", "BF16", (head,)
        if i < config["first_k_dense_replace"]:
            yield from _mlp(p + "mlp.", hidden, dense)
            continue
        yield p + "mlp.gate.weight", "BF16", (experts, hidden)
        yield p + "mlp.gate.expert_bias", "F32", (experts,)
        for j in range(experts):
            yield from _mlp(f"{p}mlp.experts.{j}.", hidden, width)
        yield from _mlp(p + "mlp.shared_experts.", hidden, width * config["num_shared_experts"])
    yield "model.norm.weight", "BF16", (hidden,)
    yield "lm_head.weight", "BF16", (vocab, hidden)


def _mlp(prefix: str, hidden: int, width: int) -> Iterator[Tensor]:
    yield prefix + "gate_proj.weight", "BF16", (width, hidden)
    yield prefix + "up_proj.weight", "BF16", (width, hidden)
    yield prefix + "down_proj.weight", "BF16", (hidden, width)


# ---------------------------------------------------------------------- Kimi K2.5

_INT4_GROUPS = {
    "config_groups": {
        "group_0": {
            "input_activations": None,
            "output_activations": None,
            "targets": ["Linear"],
            "weights": {
                "actorder": None,
                "block_structure": None,
                "dynamic": False,
                "group_size": 32,
                "num_bits": 4,
                "observer": "minmax",
                "observer_kwargs": {},
                "strategy": "group",
                "symmetric": True,
                "type": "int",
            },
        }
    },
    "format": "pack-quantized",
    "ignore": [
        "lm_head",
        "re:.*self_attn.*",
        "re:.*shared_experts.*",
        "re:.*mlp\\.(gate|up|gate_up|down)_proj.*",
    ],
    "kv_cache_scheme": None,
    "quant_method": "compressed-tensors",
    "quantization_status": "compressed",
}

KIMI_K25_CONFIG: dict[str, Any] = {
    "architectures": ["KimiK25ForConditionalGeneration"],
    "auto_map": {
        "AutoConfig": "configuration_kimi_k25.KimiK25Config",
        "AutoModel": "modeling_kimi_k25.KimiK25ForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_kimi_k25.KimiK25ForConditionalGeneration",
    },
    "bos_token_id": 163584,
    "dtype": "bfloat16",
    "eos_token_id": 163585,
    "ignore_index": -100,
    "media_placeholder_token_id": 163605,
    "model_type": "kimi_k25",
    "pad_token_id": 163839,
    "quantization_config": _INT4_GROUPS,
    "text_config": {
        "architectures": ["DeepseekV3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_deepseek.DeepseekV3Config",
            "AutoModel": "modeling_deepseek.DeepseekV3Model",
            "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM",
        },
        "aux_loss_alpha": 0.001,
        "bos_token_id": 163584,
        "dtype": "bfloat16",
        "eos_token_id": 163585,
        "ep_size": 1,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": 7168,
        "initializer_range": 0.02,
        "intermediate_size": 18432,
        "kv_lora_rank": 512,
        "max_position_embeddings": 262144,
        "model_type": "deepseek_v3",
        "moe_intermediate_size": 2048,
        "moe_layer_freq": 1,
        "n_group": 1,
        "n_routed_experts": 384,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 64,
        "num_experts_per_tok": 8,
        "num_hidden_layers": 61,
        "num_key_value_heads": 64,
        "num_nextn_predict_layers": 0,
        "pad_token_id": 163839,
        "pretraining_tp": 1,
        "q_lora_rank": 1536,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "quantization_config": _INT4_GROUPS,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 64.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096,
            "type": "yarn",
        },
        "rope_theta": 50000.0,
        "routed_scaling_factor": 2.827,
        "scoring_func": "sigmoid",
        "seq_aux": True,
        "tie_word_embeddings": False,
        "topk_group": 1,
        "topk_method": "noaux_tc",
        "use_cache": True,
        "v_head_dim": 128,
        "vocab_size": 163840,
    },
    "tie_word_embeddings": False,
    "use_unified_vision_chunk": True,
    "video_placeholder": "<|kimi_k25_video_placeholder|>",
    "vision_config": {
        "init_pos_emb_height": 64,
        "init_pos_emb_time": 4,
        "init_pos_emb_width": 64,
        "merge_kernel_size": [2, 2],
        "merge_type": "sd2_tpool",
        "mm_hidden_size": 1152,
        "mm_projector_type": "patchmerger",
        "patch_size": 14,
        "pos_emb_type": "divided_fixed",
        "projector_hidden_act": "gelu",
        "projector_ln_eps": 1e-05,
        "text_hidden_size": 7168,
        "video_attn_type": "spatial_temporal",
        "vt_hidden_size": 1152,
        "vt_intermediate_size": 4304,
        "vt_num_attention_heads": 16,
        "vt_num_hidden_layers": 27,
    },
}


def _vision_block(
    p: str, names: tuple[str, str, str, str, str, str], tower: int, inner: int
) -> Iterator[Tensor]:
    """One pre-norm ViT block, weights and biases, under this checkpoint's names: the two
    norms, fused qkv, attention output, MLP in and out (Kimi's MoonViT, Qwen3.5's tower)."""
    norm_a, norm_b, qkv, proj, fc_in, fc_out = names
    shapes = {
        norm_a: (tower,),
        norm_b: (tower,),
        qkv: (3 * tower, tower),
        proj: (tower, tower),
        fc_in: (inner, tower),
        fc_out: (tower, inner),
    }
    for name, shape in shapes.items():
        yield p + f"{name}.weight", "BF16", shape
        yield p + f"{name}.bias", "BF16", shape[:1]


def _kimi_tensors(config: dict[str, Any]) -> Iterator[Tensor]:
    text, vision = config["text_config"], config["vision_config"]
    hidden, vocab, heads = text["hidden_size"], text["vocab_size"], text["num_attention_heads"]
    q_lora, kv_lora = text["q_lora_rank"], text["kv_lora_rank"]
    nope, rope, value = text["qk_nope_head_dim"], text["qk_rope_head_dim"], text["v_head_dim"]
    width, experts = text["moe_intermediate_size"], text["n_routed_experts"]
    for i in range(text["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        yield p + "input_layernorm.weight", "BF16", (hidden,)
        yield p + "post_attention_layernorm.weight", "BF16", (hidden,)
        yield p + "self_attn.q_a_proj.weight", "BF16", (q_lora, hidden)
        yield p + "self_attn.q_a_layernorm.weight", "BF16", (q_lora,)
        yield p + "self_attn.q_b_proj.weight", "BF16", (heads * (nope + rope), q_lora)
        yield p + "self_attn.kv_a_proj_with_mqa.weight", "BF16", (kv_lora + rope, hidden)
        yield p + "self_attn.kv_a_layernorm.weight", "BF16", (kv_lora,)
        yield p + "self_attn.kv_b_proj.weight", "BF16", (heads * (nope + value), kv_lora)
        yield p + "self_attn.o_proj.weight", "BF16", (hidden, heads * value)
        if i < text["first_k_dense_replace"]:
            yield from _mlp(p + "mlp.", hidden, text["intermediate_size"])
            continue
        yield p + "mlp.gate.weight", "BF16", (experts, hidden)
        yield p + "mlp.gate.e_score_correction_bias", "F32", (experts,)
        for j in range(experts):
            for name, rows, columns in (
                ("gate_proj", width, hidden),
                ("up_proj", width, hidden),
                ("down_proj", hidden, width),
            ):
                q = f"{p}mlp.experts.{j}.{name}."
                yield q + "weight_packed", "I32", (rows, columns // 8)  # 8 int4 per int32
                yield q + "weight_scale", "BF16", (rows, columns // 32)  # one per group of 32
                yield q + "weight_shape", "I32", (2,)
        yield from _mlp(p + "mlp.shared_experts.", hidden, width * text["n_shared_experts"])
    yield "language_model.model.embed_tokens.weight", "BF16", (vocab, hidden)
    yield "language_model.model.norm.weight", "BF16", (hidden,)
    yield "language_model.lm_head.weight", "BF16", (vocab, hidden)
    tower, merged = vision["vt_hidden_size"], vision["mm_hidden_size"] * 4
    yield "mm_projector.pre_norm.weight", "BF16", (vision["mm_hidden_size"],)
    yield "mm_projector.pre_norm.bias", "BF16", (vision["mm_hidden_size"],)
    yield "mm_projector.proj.0.weight", "BF16", (merged, merged)
    yield "mm_projector.proj.0.bias", "BF16", (merged,)
    yield "mm_projector.proj.2.weight", "BF16", (hidden, merged)
    yield "mm_projector.proj.2.bias", "BF16", (hidden,)
    inner = vision["vt_intermediate_size"]
    for b in range(vision["vt_num_hidden_layers"]):
        names = ("norm0", "norm1", "wqkv", "wo", "mlp.fc0", "mlp.fc1")
        yield from _vision_block(f"vision_tower.encoder.blocks.{b}.", names, tower, inner)
    yield "vision_tower.encoder.final_layernorm.weight", "BF16", (tower,)
    yield "vision_tower.encoder.final_layernorm.bias", "BF16", (tower,)
    patch = vision["patch_size"]
    yield "vision_tower.patch_embed.pos_emb.weight", "BF16", (64, 64, tower)
    yield "vision_tower.patch_embed.proj.weight", "BF16", (tower, 3, patch, patch)
    yield "vision_tower.patch_embed.proj.bias", "BF16", (tower,)


# ---------------------------------------------------------------------- Qwen3.5-397B-A17B

_QWEN35_LAYERS = 60
QWEN35_397B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3_5MoeForConditionalGeneration"],
    "model_type": "qwen3_5_moe",
    "image_token_id": 248056,
    "video_token_id": 248057,
    "vision_start_token_id": 248053,
    "vision_end_token_id": 248054,
    "tie_word_embeddings": False,
    "transformers_version": "4.57.0.dev0",
    "text_config": {
        "model_type": "qwen3_5_moe_text",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_output_gate": True,
        "bos_token_id": 248045,
        "decoder_sparse_step": 1,
        "dtype": "bfloat16",
        "eos_token_id": 248046,
        "full_attention_interval": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "layer_types": [
            "full_attention" if (i + 1) % 4 == 0 else "linear_attention"
            for i in range(_QWEN35_LAYERS)
        ],
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 64,
        "linear_value_head_dim": 128,
        "max_position_embeddings": 262144,
        "mlp_only_layers": [],
        "moe_intermediate_size": 1024,
        "mtp_num_hidden_layers": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 32,
        "num_experts": 512,
        "num_experts_per_tok": 10,
        "num_hidden_layers": _QWEN35_LAYERS,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {
            "mrope_interleaved": True,
            "mrope_section": [11, 11, 10],
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000000,
            "rope_type": "default",
        },
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 1024,
        "use_cache": True,
        "vocab_size": 248320,
    },
    "vision_config": {
        "model_type": "qwen3_5_moe",
        "deepstack_visual_indexes": [],
        "depth": 27,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 1152,
        "in_channels": 3,
        "intermediate_size": 4304,
        "num_heads": 16,
        "num_position_embeddings": 2304,
        "out_hidden_size": 4096,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}


def _qwen35_layer(p: str, text: dict[str, Any], full: bool, fused: bool) -> Iterator[Tensor]:
    hidden, heads, kv, head = (
        text["hidden_size"],
        text["num_attention_heads"],
        text["num_key_value_heads"],
        text["head_dim"],
    )
    yield p + "input_layernorm.weight", "BF16", (hidden,)
    yield p + "post_attention_layernorm.weight", "BF16", (hidden,)
    if full:  # gated attention: q_proj also gives the output gate
        yield p + "self_attn.q_proj.weight", "BF16", (2 * heads * head, hidden)
        yield p + "self_attn.k_proj.weight", "BF16", (kv * head, hidden)
        yield p + "self_attn.v_proj.weight", "BF16", (kv * head, hidden)
        yield p + "self_attn.o_proj.weight", "BF16", (hidden, heads * head)
        yield p + "self_attn.q_norm.weight", "BF16", (head,)
        yield p + "self_attn.k_norm.weight", "BF16", (head,)
    else:  # Gated DeltaNet
        keys = text["linear_num_key_heads"] * text["linear_key_head_dim"]
        value_heads = text["linear_num_value_heads"]
        values = value_heads * text["linear_value_head_dim"]
        channels = 2 * keys + values
        yield p + "linear_attn.in_proj_qkv.weight", "BF16", (channels, hidden)
        yield p + "linear_attn.in_proj_z.weight", "BF16", (values, hidden)
        yield p + "linear_attn.in_proj_b.weight", "BF16", (value_heads, hidden)
        yield p + "linear_attn.in_proj_a.weight", "BF16", (value_heads, hidden)
        kernel = text["linear_conv_kernel_dim"]
        yield p + "linear_attn.conv1d.weight", "BF16", (channels, 1, kernel)
        yield p + "linear_attn.dt_bias", "BF16", (value_heads,)
        yield p + "linear_attn.A_log", "F32", (value_heads,)
        yield p + "linear_attn.norm.weight", "F32", (text["linear_value_head_dim"],)
        yield p + "linear_attn.out_proj.weight", "BF16", (hidden, values)
    experts, width = text["num_experts"], text["moe_intermediate_size"]
    yield p + "mlp.gate.weight", "BF16", (experts, hidden)
    if fused:  # all experts in two 3-D tensors
        yield p + "mlp.experts.gate_up_proj", "BF16", (experts, 2 * width, hidden)
        yield p + "mlp.experts.down_proj", "BF16", (experts, hidden, width)
    else:
        for j in range(experts):
            yield from _mlp(f"{p}mlp.experts.{j}.", hidden, width)
    yield from _mlp(p + "mlp.shared_expert.", hidden, text["shared_expert_intermediate_size"])
    yield p + "mlp.shared_expert_gate.weight", "BF16", (1, hidden)


def _qwen35_tensors(config: dict[str, Any]) -> Iterator[Tensor]:
    text, vision = config["text_config"], config["vision_config"]
    hidden, vocab = text["hidden_size"], text["vocab_size"]
    yield "model.language_model.embed_tokens.weight", "BF16", (vocab, hidden)
    for i, kind in enumerate(text["layer_types"]):
        prefix = f"model.language_model.layers.{i}."
        yield from _qwen35_layer(prefix, text, kind == "full_attention", fused=True)
    yield "model.language_model.norm.weight", "BF16", (hidden,)
    yield "lm_head.weight", "BF16", (vocab, hidden)
    yield "mtp.fc.weight", "BF16", (hidden, 2 * hidden)
    yield "mtp.pre_fc_norm_embedding.weight", "BF16", (hidden,)
    yield "mtp.pre_fc_norm_hidden.weight", "BF16", (hidden,)
    yield "mtp.norm.weight", "BF16", (hidden,)
    for i in range(text["mtp_num_hidden_layers"]):
        yield from _qwen35_layer(f"mtp.layers.{i}.", text, full=True, fused=False)
    tower, inner = vision["hidden_size"], vision["intermediate_size"]
    patch, temporal = vision["patch_size"], vision["temporal_patch_size"]
    yield "model.visual.patch_embed.proj.weight", "BF16", (tower, 3, temporal, patch, patch)
    yield "model.visual.patch_embed.proj.bias", "BF16", (tower,)
    yield "model.visual.pos_embed.weight", "BF16", (vision["num_position_embeddings"], tower)
    for b in range(vision["depth"]):
        names = ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2")
        yield from _vision_block(f"model.visual.blocks.{b}.", names, tower, inner)
    merged = tower * vision["spatial_merge_size"] ** 2
    yield "model.visual.merger.norm.weight", "BF16", (tower,)
    yield "model.visual.merger.norm.bias", "BF16", (tower,)
    yield "model.visual.merger.linear_fc1.weight", "BF16", (merged, merged)
    yield "model.visual.merger.linear_fc1.bias", "BF16", (merged,)
    yield "model.visual.merger.linear_fc2.weight", "BF16", (vision["out_hidden_size"], merged)
    yield "model.visual.merger.linear_fc2.bias", "BF16", (vision["out_hidden_size"],)


# ---------------------------------------------------------------------- the entries

LING_1T = PublishedModel(
    "inclusionAI/Ling-1T",
    LING_1T_CONFIG,
    {"bos_token_id": 156891, "eos_token_id": [156892, 156895], "pad_token_id": 156892},
    _ling_tensors,
    shards=155,
    published_total=1e12,  # "1 trillion total parameters with ≈ 50 billion active"
    published_active=50e9,
)
KIMI_K25 = PublishedModel(
    "moonshotai/Kimi-K2.5",
    KIMI_K25_CONFIG,
    {"bos_token_id": 163584, "eos_token_id": 163585, "max_length": 262144},
    _kimi_tensors,
    shards=64,
    shard_digits=(5, 6),
    published_total=1e12,  # model card: 1T total, 32B activated
    published_active=32e9,
)
QWEN35_397B = PublishedModel(
    "Qwen/Qwen3.5-397B-A17B",
    QWEN35_397B_CONFIG,
    {"bos_token_id": 248045, "eos_token_id": [248046, 248044], "temperature": 0.6},
    _qwen35_tensors,
    shards=None,
    published_total=397e9,
    published_active=17e9,
)
GIANTS = (LING_1T, QWEN35_397B, KIMI_K25)

_SHARD_BYTES = 5 * 10**9


def _nbytes(tensor: Tensor) -> int:
    return math.prod(tensor[2]) * _BYTES[tensor[1]]


def header_only_file(path: Path, tensors: list[Tensor]) -> None:
    """A safetensors file cut after its header: 8-byte length, JSON header padded with
    spaces to 8 bytes (as safetensors writes it), and no data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in tensors:
        end = offset + _nbytes((name, dtype, shape))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    data = json.dumps(header, separators=(",", ":")).encode()
    data += b" " * (-len(data) % 8)
    path.write_bytes(struct.pack("<Q", len(data)) + data)


def write_entry(cache: Path, model: PublishedModel) -> Path:
    """The model's cache entry under `cache` (HF_HUB_CACHE); returns its snapshot folder."""
    root = cache / model.cache_folder
    snapshot = root / "snapshots" / model.commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(model.commit)
    (snapshot / "config.json").write_text(json.dumps(model.config, indent=2))
    (snapshot / "generation_config.json").write_text(json.dumps(model.generation_config))
    tensors = list(model.tensors(model.config))
    total = sum(_nbytes(t) for t in tensors)
    count = model.shards or math.ceil(total / _SHARD_BYTES)
    per_shard = total / count
    shards: list[list[Tensor]] = [[] for _ in range(count)]
    done = 0
    for tensor in tensors:  # in order, each shard about the same size
        shards[min(count - 1, int(done // per_shard))].append(tensor)
        done += _nbytes(tensor)
    digits, count_digits = model.shard_digits
    weight_map = {}
    for index, members in enumerate(shards, start=1):
        name = f"model-{index:0{digits}d}-of-{count:0{count_digits}d}.safetensors"
        header_only_file(snapshot / name, members)
        weight_map.update({tensor[0]: name for tensor in members})
    index_file = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(index_file))
    return snapshot
