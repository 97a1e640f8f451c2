"""Planning from metadata only: giant mixtures of experts answered from their config and
safetensors headers, before any weight is downloaded.

The Hub cache entries of Ling-1T, Qwen3.5-397B-A17B and Kimi K2.5 (metadata_models.py)
hold the published configs and weight files cut after their headers: a plan that read a
weight would fail on them. The KV-cache and parameter formulas are checked on small
hand-written configs whose numbers are worked out in the comments.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import MINILM, TEST_CACHE, needs_minilm, run_cli
from metadata_models import GIANTS, KIMI_K25, LING_1T, QWEN35_397B, PublishedModel, write_entry

from edgeport.errors import DoesNotFitError, EdgeportError
from edgeport.hub import read_config, resolve, resolve_metadata
from edgeport.model_shape import (
    count_weights,
    estimate_parameters,
    kv_cache_elements,
    kv_elements_per_token,
    model_dims,
    model_shape,
)
from edgeport.schemas import ModelDims, ModelInfo

# What each published config makes of the KV cache, worked out by hand (elements per token):
# Ling-1T, grouped-query: 2 (K and V) x 80 layers x 8 KV heads x 128.
# Qwen3.5-397B-A17B: 15 of its 60 layers attend (every 4th), 2 x 2 KV heads x 256 each;
#   the 45 Gated DeltaNet layers keep a constant state instead.
# Kimi K2.5, latent attention: 61 layers x (512 latent + 64 rotary key).
KV_ELEMENTS_PER_TOKEN = {
    LING_1T.repo_id: 2 * 80 * 8 * 128,
    QWEN35_397B.repo_id: 15 * 2 * 2 * 256,
    KIMI_K25.repo_id: 61 * (512 + 64),
}


@pytest.fixture(scope="session")
def giants() -> Path:
    """The three entries, in the session's throw-away copy of the Hub cache."""
    for model in GIANTS:
        write_entry(TEST_CACHE, model)
    return TEST_CACHE


def _profile(folder: Path, memory_mb: int, profile_id: str = "big-server") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{profile_id}.yaml"
    path.write_text(
        f"id: {profile_id}\nname: a server\n"
        "cpu: {arch: x86_64, cores: 64, features: [avx2, fma, f16c, avx512_vnni]}\n"
        f"memory_mb: {memory_mb}\nmemory_bandwidth_gbs: 400\ncontext_length: 4096\n"
        "runtimes:\n  - {target: onnxruntime, devices: [CPUExecutionProvider]}\n"
        "  - {target: llama.cpp, devices: [CPU]}\n"
    )
    return path


def _within(value: float, published: float, share: float) -> bool:
    return abs(value - published) <= share * published


@pytest.mark.parametrize("model", GIANTS, ids=lambda m: m.repo_id)
def test_a_giant_model_fits_nothing_on_a_raspberry_pi_and_says_by_how_much(
    giants: Path, model: PublishedModel
) -> None:
    result = run_cli("plan", model.repo_id, "--profile", "raspberry-pi-5", "--json")
    assert result.returncode == 5, result.stderr
    payload = json.loads(result.stdout)
    assert payload["model"] == model.repo_id and payload["profile"] == "raspberry-pi-5"
    # Counted from the headers, close to what the model cards publish.
    assert payload["from_headers"] is True
    assert _within(payload["parameters_total"], model.published_total, 0.05)
    assert _within(payload["parameters_active"], model.published_active, 0.05)
    assert payload["experts_per_token"] == model.config.get(
        "num_experts_per_tok", model.config.get("text_config", {}).get("num_experts_per_tok")
    )
    assert payload["num_shared_experts"] == 1
    weights = payload["weight_bytes"]
    assert list(weights) == ["fp32", "fp16", "int8", "int4"]  # largest first
    assert weights["int4"] < weights["int8"] < weights["fp16"] < weights["fp32"]
    assert weights["int4"] > payload["usable_memory_bytes"] * 30
    # llama.cpp keeps its cache in f16: 2 bytes per element.
    assert payload["kv_cache_element_bytes"] == 2
    assert payload["kv_cache_bytes_per_token"] == 2 * KV_ELEMENTS_PER_TOKEN[model.repo_id]
    assert payload["context_tokens"] == 2048
    assert payload["candidates"] == [] and payload["error"]["exit_code"] == 5
    message = payload["error"]["message"]
    assert message.startswith(f"nothing fits raspberry-pi-5: {model.repo_id} has ")
    assert "at int4" in message and "active" in message and "KV cache" in message
    assert "at most" in message  # the nearest thing that would fit
    assert result.stderr.strip().splitlines()[-1] == f"error: {message}"


@pytest.mark.parametrize("model", GIANTS, ids=lambda m: m.repo_id)
def test_a_machine_with_terabytes_gets_past_the_fit_check(
    giants: Path, model: PublishedModel, tmp_path: Path
) -> None:
    """Ling-1T and Kimi K2.5 need their repositories' code, Qwen3.5 is a type this
    transformers does not know: exit 4, with the numbers that said they fit."""
    from edgeport.catalog import load_catalog
    from edgeport.pipeline import ConvertRequest, make_plan
    from edgeport.progress import SilentProgress

    profiles = tmp_path / "profiles"
    _profile(profiles, memory_mb=4 * 1024 * 1024)
    catalog = load_catalog((profiles,), ())
    request = ConvertRequest(model=model.repo_id, profile="big-server", catalog=catalog)
    with pytest.raises(EdgeportError) as caught:
        make_plan(request, SilentProgress())
    assert caught.value.exit_code == 4, caught.value
    numbers = caught.value.details
    assert numbers["profile"] == "big-server"
    assert _within(float(str(numbers["parameters_total"])), model.published_total, 0.05)


@pytest.mark.parametrize("model", GIANTS, ids=lambda m: m.repo_id)
def test_the_config_formula_agrees_with_the_headers(giants: Path, model: PublishedModel) -> None:
    """The fallback for a cache without weight files lands within 3 % of the count."""
    metadata = resolve_metadata(model.repo_id)
    config = read_config(metadata.resolved.local_path)
    counted = model_shape(config, metadata.headers)
    total, active = estimate_parameters(config)
    assert counted.from_headers and counted.decodes
    # The estimate has no vision tower or MTP head: compare with what decoding reads.
    assert _within(active, counted.parameters_active, 0.03)
    assert _within(total, counted.parameters_total, 0.03)


def test_a_cache_holding_only_the_config_is_answered_from_it(giants: Path, tmp_path: Path) -> None:
    """Offline with the weight files not cached, the plan still answers: estimated."""
    entry = TEST_CACHE / LING_1T.cache_folder
    lone = "inclusionAI/Ling-1T-config-only"
    copy = TEST_CACHE / ("models--" + lone.replace("/", "--"))
    snapshot = copy / "snapshots" / LING_1T.commit
    snapshot.mkdir(parents=True, exist_ok=True)
    shutil.copytree(entry / "refs", copy / "refs", dirs_exist_ok=True)
    shutil.copy(entry / "snapshots" / LING_1T.commit / "config.json", snapshot)
    result = run_cli("plan", lone, "--profile", "raspberry-pi-5", "--json")
    assert result.returncode == 5, result.stderr
    payload = json.loads(result.stdout)
    assert payload["from_headers"] is False
    assert _within(payload["parameters_total"], LING_1T.published_total, 0.05)
    assert "(estimated from config.json)" in payload["error"]["message"]


def _forbid_weight_downloads(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """From now on, every snapshot download must name the files it wants, and none of
    them weights; returns the patterns asked for."""
    import huggingface_hub

    real = huggingface_hub.snapshot_download
    asked: list[list[str]] = []

    def metadata_only(*args: Any, allow_patterns: list[str] | None = None, **kwargs: Any) -> str:
        assert allow_patterns, "a whole snapshot (weights included) was downloaded"
        assert not any("safetensors" in p or p == "*" for p in allow_patterns), allow_patterns
        asked.append(list(allow_patterns))
        return str(real(*args, allow_patterns=allow_patterns, **kwargs))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", metadata_only)
    return asked


def test_converting_a_giant_model_stops_before_any_weight(
    giants: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeport.pipeline import ConvertRequest, convert

    no_weight_downloads = _forbid_weight_downloads(monkeypatch)
    out = tmp_path / "bundle"
    request = ConvertRequest(model=KIMI_K25.repo_id, profile="raspberry-pi-5", out=out)
    with pytest.raises(DoesNotFitError, match="nothing fits raspberry-pi-5"):
        convert(request)
    assert no_weight_downloads and not out.exists()


@needs_minilm
def test_a_small_model_plans_as_before_without_downloading_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The metadata path gives MiniLM the plan the full snapshot gave it."""
    from edgeport.backends import host_targets
    from edgeport.catalog import load_catalog
    from edgeport.model_info import inspect_model
    from edgeport.pipeline import ConvertRequest, make_plan
    from edgeport.planner import plan
    from edgeport.progress import SilentProgress

    catalog = load_catalog((), ())
    profile = catalog.profile("raspberry-pi-5")
    before_info = inspect_model(resolve(MINILM))  # the old way: the whole snapshot
    before = plan(
        before_info,
        profile,
        catalog.recipes.values(),
        catalog.targets,
        host_targets(catalog.targets.values()),
        objective="latency",
    )
    no_weight_downloads = _forbid_weight_downloads(monkeypatch)
    request = ConvertRequest(model=MINILM, profile="raspberry-pi-5", catalog=catalog)
    after = make_plan(request, SilentProgress())
    assert no_weight_downloads  # it went through the cache, metadata files only
    assert after.model == before_info
    assert after.candidates == before.candidates and after.dropped == before.dropped
    assert after.footprint is not None and after.footprint.parameters_total == 22_713_728
    assert after.footprint.kv_cache_bytes_per_token is None  # an encoder keeps no cache


# ---------------------------------------------------------------------- the formulas


def test_grouped_query_attention_caches_keys_and_values_per_kv_head() -> None:
    config = {"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 8}
    config["num_key_value_heads"] = 2
    dims = model_dims(config)
    assert dims.attention == "gqa"
    assert kv_elements_per_token(dims) == 2 * 4 * 2 * 16  # K and V, 4 layers, 2 heads of 16
    assert kv_cache_elements(dims, 100) == 256 * 100


def test_latent_attention_caches_the_compressed_latent_and_the_rotary_key() -> None:
    config = {
        "num_hidden_layers": 3,
        "hidden_size": 256,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "kv_lora_rank": 64,
        "qk_rope_head_dim": 16,
        "qk_nope_head_dim": 32,
        "v_head_dim": 32,
    }
    dims = model_dims(config)
    assert dims.attention == "mla"
    assert kv_elements_per_token(dims) == 3 * (64 + 16)  # not 2 x 3 x 16 heads x 48


def test_sliding_window_layers_keep_at_most_their_window() -> None:
    # Gemma 3's pattern: every 3rd layer global, the others a window of 4 tokens.
    config = {
        "num_hidden_layers": 6,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "sliding_window": 4,
        "sliding_window_pattern": 3,
    }
    dims = model_dims(config)
    assert dims.attention == "gqa+sliding" and dims.sliding_window == 4
    per_layer = 2 * 1 * 16
    assert kv_cache_elements(dims, 3) == 6 * per_layer * 3  # within the window: every layer
    assert kv_cache_elements(dims, 10) == 2 * per_layer * 10 + 4 * per_layer * 4
    # The same from explicit layer types; and a window that is switched off counts for nothing.
    typed = {k: v for k, v in config.items() if k != "sliding_window_pattern"}
    typed["layer_types"] = ["sliding_attention", "sliding_attention", "full_attention"] * 2
    assert kv_cache_elements(model_dims(typed), 10) == kv_cache_elements(dims, 10)
    off = {**typed, "use_sliding_window": False}
    off.pop("layer_types")
    assert kv_cache_elements(model_dims(off), 10) == 6 * per_layer * 10


def test_linear_attention_layers_keep_a_constant_state() -> None:
    # Qwen3-Next's layout: full attention every 4th of 8 layers, Gated DeltaNet elsewhere.
    config = {
        "num_hidden_layers": 8,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "full_attention_interval": 4,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": 8,
        "linear_value_head_dim": 8,
        "linear_conv_kernel_dim": 4,
    }
    dims = model_dims(config)
    assert dims.attention == "gqa+linear"
    assert kv_elements_per_token(dims) == 2 * (2 * 2 * 16)  # 2 attention layers
    # Per linear layer: 4 value heads x 8 x 8 state, and 3 past inputs of the
    # convolution over q, k and v (2x2x8 + 4x8 = 64 channels); 6 such layers.
    state = 6 * (4 * 8 * 8 + 64 * 3)
    assert kv_cache_elements(dims, 0) == state
    assert kv_cache_elements(dims, 1000) == 2 * 64 * 1000 + state


def test_dimensions_without_a_layout_use_the_formula_they_always_did() -> None:
    """Hand-built dims (tests, a family's tower) count every layer as attention."""
    dims = ModelDims(hidden_size=256, num_layers=4, num_attention_heads=8, num_key_value_heads=2)
    assert kv_cache_elements(dims, 10) == 2.0 * 4 * 2 * 32 * 10
    read = model_dims(
        {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8}
        | {"num_key_value_heads": 2}
    )
    assert kv_cache_elements(read, 10) == kv_cache_elements(dims, 10)


def test_quantised_storage_counts_the_parameters_it_packs() -> None:
    config = {
        "num_hidden_layers": 2,
        "num_experts": 4,
        "num_experts_per_tok": 1,
        "quantization_config": {"config_groups": {"g": {"weights": {"num_bits": 4}}}},
    }
    header = {
        "__metadata__": {"format": "pt"},
        # 8 int4 values per int32; the scales are not parameters.
        "model.layers.0.mlp.experts.0.up_proj.weight_packed": {"dtype": "I32", "shape": [4, 2]},
        "model.layers.0.mlp.experts.0.up_proj.weight_scale": {"dtype": "BF16", "shape": [4, 1]},
        "model.layers.0.mlp.experts.1.up_proj.weight_packed": {"dtype": "I32", "shape": [4, 2]},
        # MXFP4 (gpt-oss): two values per byte, fused over the experts.
        "model.layers.1.mlp.experts.down_proj_blocks": {"dtype": "U8", "shape": [4, 2, 4]},
        "model.layers.1.mlp.experts.down_proj_scales": {"dtype": "U8", "shape": [4, 2]},
        "model.layers.0.mlp.shared_experts.up_proj.weight": {"dtype": "BF16", "shape": [4, 16]},
        "vision_tower.blocks.0.weight": {"dtype": "BF16", "shape": [10]},
    }
    count = count_weights([("model.safetensors", header)], config)
    routed = 2 * 64 + 2 * 32
    assert count.total == routed + 64 + 10
    # A token uses 1 of 4 routed experts, every shared one, and never the vision tower.
    assert count.active == routed // 4 + 64
    assert count.stored_bytes == 2 * 32 + 8 + 32 + 8 + 128 + 20


def test_decoding_speed_counts_the_active_parameters() -> None:
    from edgeport.catalog import load_catalog
    from edgeport.planner import decode_bytes_per_token

    recipe = load_catalog((), ()).recipe("gguf-q4_k_m")
    base: dict[str, Any] = {
        "source": "moe",
        "local_path": Path("moe"),
        "task": "text-generation-with-past",
        "family": "decoder",
        "model_type": "qwen3_moe",
        "parameter_count": 30_000_000_000,
        "weight_dtype": "BF16",
        "weight_bytes": 60_000_000_000,
        "files": [],
    }
    dense = ModelInfo.model_validate(base)
    moe = ModelInfo.model_validate({**base, "parameters_active": 3_000_000_000})
    ratio = decode_bytes_per_token(dense, recipe) / decode_bytes_per_token(moe, recipe)
    assert ratio == pytest.approx(10.0)


def test_online_the_headers_come_from_the_hub_without_the_weight_files(
    giants: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the Hub reachable and no weight file cached, the file list and each header
    come from the Hub (huggingface_hub's model_info and safetensors metadata API): here
    fakes that answer what the Hub would for Qwen3.5-397B-A17B."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata
    from huggingface_hub.utils._safetensors import TensorInfo

    from edgeport.model_shape import read_safetensors_header

    source = TEST_CACHE / QWEN35_397B.cache_folder / "snapshots" / QWEN35_397B.commit
    shards = sorted(source.glob("*.safetensors"))
    metadata_only = tmp_path / QWEN35_397B.commit  # what the cache holds: no weight file
    metadata_only.mkdir()
    for name in ("config.json", "generation_config.json"):
        shutil.copy(source / name, metadata_only)
    repository = sorted(p.name for p in source.iterdir())

    class Sibling:
        def __init__(self, name: str) -> None:
            self.rfilename = name

    class Info:
        def __init__(self) -> None:
            self.sha = QWEN35_397B.commit
            self.siblings = [Sibling(name) for name in repository]

    asked: list[list[str] | None] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        asked.append(kwargs.get("allow_patterns"))
        return str(metadata_only)

    def model_info(self: object, repo_id: str, **kwargs: Any) -> Info:
        assert repo_id == QWEN35_397B.repo_id and kwargs["files_metadata"] is False
        return Info()

    def get_safetensors_metadata(repo_id: str, **kwargs: Any) -> SafetensorsRepoMetadata:
        files = {}
        for shard in shards:
            header = read_safetensors_header(shard)
            tensors = {
                name: TensorInfo(entry["dtype"], entry["shape"], tuple(entry["data_offsets"]))
                for name, entry in header.items()
                if name != "__metadata__"
            }
            files[shard.name] = SafetensorsFileMetadata(metadata={}, tensors=tensors)
        weight_map = {t: f for f, m in files.items() for t in m.tensors}
        return SafetensorsRepoMetadata(
            metadata=None, sharded=True, weight_map=weight_map, files_metadata=files
        )

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", get_safetensors_metadata)
    metadata = resolve_metadata(QWEN35_397B.repo_id)
    assert metadata.online and asked == [["config.json", "generation_config.json"]]
    assert metadata.headers is not None and sorted(metadata.headers) == [s.name for s in shards]
    assert metadata.resolved.commit == QWEN35_397B.commit
    shape = model_shape(read_config(metadata.resolved.local_path), metadata.headers)
    assert shape.from_headers and _within(shape.parameters_total, 397e9, 0.05)


def test_a_small_mixture_of_experts_plans_with_its_active_parameters(tmp_path: Path) -> None:
    """A Qwen3-MoE shape (8 experts, 2 per token) small enough for a Raspberry Pi: the
    plan carries its numbers, and decoding is estimated from the experts a token uses."""
    from metadata_models import header_only_file

    folder = tmp_path / "tiny-qwen3-moe"
    folder.mkdir()
    hidden, width, experts, vocab = 64, 32, 8, 256
    config = {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "hidden_size": hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": vocab,
        "max_position_embeddings": 512,
        "num_experts": experts,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": width,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "tie_word_embeddings": False,
    }
    (folder / "config.json").write_text(json.dumps(config))
    tensors: list[tuple[str, str, tuple[int, ...]]] = [
        ("model.embed_tokens.weight", "BF16", (vocab, hidden)),
        ("lm_head.weight", "BF16", (vocab, hidden)),
    ]
    for i in range(2):
        p = f"model.layers.{i}."
        tensors += [
            (p + "self_attn.q_proj.weight", "BF16", (64, hidden)),
            (p + "self_attn.k_proj.weight", "BF16", (32, hidden)),
            (p + "self_attn.v_proj.weight", "BF16", (32, hidden)),
            (p + "self_attn.o_proj.weight", "BF16", (hidden, 64)),
            (p + "mlp.gate.weight", "BF16", (experts, hidden)),
        ]
        for j in range(experts):
            for name, shape in (("gate_proj", (width, hidden)), ("up_proj", (width, hidden))):
                tensors.append((f"{p}mlp.experts.{j}.{name}.weight", "BF16", shape))
            tensors.append((f"{p}mlp.experts.{j}.down_proj.weight", "BF16", (hidden, width)))
    header_only_file(folder / "model.safetensors", tensors)

    result = run_cli("plan", str(folder), "--profile", "raspberry-pi-5", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    embeddings, attention, routers = 2 * vocab * hidden, 2 * 12288, 2 * experts * hidden
    routed = 2 * experts * 3 * width * hidden
    assert payload["parameters_total"] == embeddings + attention + routers + routed
    assert payload["parameters_active"] == embeddings + attention + routers + routed // 4
    assert (payload["num_experts"], payload["experts_per_token"]) == (8, 2)
    assert payload["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 16 * 2  # K+V, 2 layers, f16
    assert payload["candidates"], payload["dropped"]
