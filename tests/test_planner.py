from __future__ import annotations

from pathlib import Path

from edgeport.backends import host_targets
from edgeport.catalog import load_catalog
from edgeport.planner import plan
from edgeport.schemas import DeviceProfile, ModelDims, ModelInfo

CATALOG = load_catalog()
MINILM_INFO = ModelInfo(
    source="sentence-transformers/all-MiniLM-L6-v2",
    local_path=Path("/nonexistent"),
    task="feature-extraction",
    family="encoder",
    model_type="bert",
    parameter_count=22_700_000,
    weight_dtype="F32",
    weight_bytes=90_800_000,
    files=[],
    dims=ModelDims(hidden_size=384, num_layers=6, num_attention_heads=12, max_positions=512),
    pooling="mean",
    max_length=256,
)
ALL_TARGETS = frozenset(CATALOG.targets)


def _plan(profile_id: str, model: ModelInfo = MINILM_INFO, targets: frozenset[str] = ALL_TARGETS):  # type: ignore[no-untyped-def]
    return plan(
        model, CATALOG.profile(profile_id), CATALOG.recipes.values(), CATALOG.targets, targets
    )


def test_int8_first_on_vnni_and_fp16_dropped_without_native_fp16() -> None:
    result = _plan("x86-64-avx512-vnni")
    ids = [c.recipe.id for c in result.candidates]
    assert ids.index("onnx-int8-dynamic") < ids.index("onnx-fp32")
    assert "onnx-fp16" not in ids
    reason = next(d.reason for d in result.dropped if d.recipe_id == "onnx-fp16")
    assert "no native fp16" in reason
    assert "avx512_vnni" in next(
        c.reason for c in result.candidates if c.recipe.id == "onnx-int8-dynamic"
    )


def test_fp16_offered_where_hardware_runs_it() -> None:
    assert "onnx-fp16" in [c.recipe.id for c in _plan("raspberry-pi-5").candidates]
    assert "onnx-fp16" not in [c.recipe.id for c in _plan("raspberry-pi-4").candidates]


def test_device_without_a_runtime_gets_no_candidates_for_it() -> None:
    result = _plan("raspberry-pi-4")
    assert all(c.target.id == "onnxruntime" for c in result.candidates)


def test_candidates_that_do_not_fit_memory_are_dropped_with_numbers() -> None:
    small = DeviceProfile.model_validate(
        {**CATALOG.profile("raspberry-pi-4").model_dump(), "id": "tiny-board", "memory_mb": 128}
    )
    result = plan(MINILM_INFO, small, CATALOG.recipes.values(), CATALOG.targets, ALL_TARGETS)
    fp32 = next(d for d in result.dropped if d.recipe_id == "onnx-fp32")
    assert fp32.code == "memory"
    assert "MB" in fp32.reason and "128" in fp32.reason
    kept = [c.recipe for c in result.candidates]
    assert kept and all(recipe.precision in {"int8", "int4"} for recipe in kept)


def test_missing_extra_is_dropped_with_install_command() -> None:
    result = _plan("x86-64-avx512-vnni", targets=frozenset({"onnxruntime"}))
    assert all(c.target.id == "onnxruntime" for c in result.candidates)
    extra = [d for d in result.dropped if d.code == "extra"]
    assert extra and all(d.target_id == "openvino" for d in extra)
    assert all("edgeport[openvino]" in d.reason for d in extra)


def test_objective_size_puts_smallest_first() -> None:
    result = plan(
        MINILM_INFO,
        CATALOG.profile("raspberry-pi-5"),
        CATALOG.recipes.values(),
        CATALOG.targets,
        ALL_TARGETS,
        objective="size",
    )
    sizes = [c.estimated_size_mb for c in result.candidates]
    assert sizes == sorted(sizes)


def test_host_targets_sees_onnxruntime() -> None:
    assert "onnxruntime" in host_targets(CATALOG.targets.values())


def test_recipe_with_a_scheme_its_target_cannot_build_is_dropped_with_the_reason() -> None:
    onnxruntime = CATALOG.targets["onnxruntime"]
    narrowed = onnxruntime.model_copy(
        update={"schemes": [s for s in onnxruntime.schemes if s != "int8-dynamic"]}
    )
    targets = {**CATALOG.targets, "onnxruntime": narrowed}
    profile = CATALOG.profile("x86-64-avx512-vnni")
    result = plan(MINILM_INFO, profile, CATALOG.recipes.values(), targets, ALL_TARGETS)
    kept = {c.recipe.id for c in result.candidates}
    assert "onnx-int8-dynamic" not in kept and "onnx-fp32" in kept
    dropped = next(d for d in result.dropped if d.recipe_id == "onnx-int8-dynamic")
    assert dropped.code == "scheme"
    assert dropped.reason.startswith("ONNX Runtime cannot build int8-dynamic models")
    assert "int8-static" in dropped.reason  # names what the target can build instead


def test_every_builtin_recipe_names_a_scheme_its_target_declares() -> None:
    for recipe in CATALOG.recipes.values():
        assert recipe.quantize.scheme in CATALOG.targets[recipe.target].schemes, recipe.id


# ----------------------------------------------------------------- language models (issue 17)

SMOLLM2_SHAPE = ModelInfo(
    source="smollm2-135m-shaped",
    local_path=Path("/nonexistent"),
    task="text-generation-with-past",
    family="decoder",
    model_type="llama",
    parameter_count=134_515_008,
    weight_dtype="F32",
    weight_bytes=538_060_032,
    files=[],
    dims=ModelDims(
        hidden_size=576,
        num_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        max_positions=8192,
    ),
)


def _candidate(profile_id: str, recipe_id: str):  # type: ignore[no-untyped-def]
    result = _plan(profile_id, SMOLLM2_SHAPE)
    return next(c for c in result.candidates if c.recipe.id == recipe_id)


def test_accuracy_level_is_resolved_from_the_profile_into_the_candidate_recipe() -> None:
    # Arm dotprod (Pi 5), x86 AVX2 and AVX-VNNI: int8 compute. Cortex-A72 (Pi 4): unset.
    for profile_id, level in (
        ("raspberry-pi-5", 4),
        ("x86-64-avx2", 4),
        ("intel-n100", 4),
        ("raspberry-pi-4", None),
    ):
        candidate = _candidate(profile_id, "onnx-int4-weight")
        assert candidate.recipe.quantize.accuracy_level == level, profile_id
        assert ("accuracy_level 4" in candidate.reason) == (level == 4)
    # The catalogue's recipe itself is untouched: the planner resolves a copy.
    assert CATALOG.recipe("onnx-int4-weight").quantize.accuracy_level is None


def test_device_knobs_resolve_first_matching_feature() -> None:
    from edgeport.schemas import Quantization

    quantization = Quantization(
        scheme="int4-weight",
        group_size=128,
        accuracy_level=1,
        accuracy_level_by_feature={"avx512_vnni": 4, "avx2": 2},
        group_size_by_feature={"dotprod": 32},
    )
    assert quantization.for_features(frozenset({"avx2", "avx512_vnni"})).accuracy_level == 4
    assert quantization.for_features(frozenset({"avx2"})).accuracy_level == 2
    resolved = quantization.for_features(frozenset({"neon", "dotprod"}))
    assert (resolved.accuracy_level, resolved.group_size) == (1, 32)
    assert quantization.for_features(frozenset()) is quantization


def test_decode_speed_is_estimated_from_bytes_per_token_and_bandwidth() -> None:
    import pytest

    from edgeport.planner import estimate_decode_tokens_per_s

    pi5 = CATALOG.profile("raspberry-pi-5")
    assert pi5.memory_bandwidth_gbs
    fp32 = _candidate("raspberry-pi-5", "onnx-fp32")
    int4 = _candidate("raspberry-pi-5", "onnx-int4-weight")
    assert "tokens/s" in int4.reason and "GB/s" in int4.reason
    # Memory-bound: a model a fifth the size decodes several times faster.
    assert int4.estimated_speedup > 3 * fp32.estimated_speedup
    fast = estimate_decode_tokens_per_s(SMOLLM2_SHAPE, int4.recipe, pi5)
    assert fast is not None
    twice = pi5.model_copy(update={"memory_bandwidth_gbs": 2 * pi5.memory_bandwidth_gbs})
    assert estimate_decode_tokens_per_s(SMOLLM2_SHAPE, int4.recipe, twice) == pytest.approx(
        2 * fast
    )
    # A longer context reads more KV cache per token.
    long = estimate_decode_tokens_per_s(SMOLLM2_SHAPE, int4.recipe, pi5, 2048)
    assert long is not None and long < fast
    # Encoders and profiles without a bandwidth get no decode estimate.
    assert estimate_decode_tokens_per_s(MINILM_INFO, int4.recipe, pi5) is None
    unknown = pi5.model_copy(update={"memory_bandwidth_gbs": None})
    assert estimate_decode_tokens_per_s(SMOLLM2_SHAPE, int4.recipe, unknown) is None


def test_every_profile_states_its_memory_bandwidth() -> None:
    for profile in CATALOG.profiles.values():
        assert profile.memory_bandwidth_gbs, profile.id
        assert "memory bandwidth" in (profile.source or ""), profile.id


def test_the_kv_cache_is_counted_at_the_targets_element_size() -> None:
    """llama.cpp keeps its KV cache in f16, ONNX Runtime in fp32: at the same weight size
    the GGUF candidate needs half the cache (a 0.5B-parameter model, 2048 tokens)."""
    from edgeport.families.text_generation import FAMILY

    lm = MINILM_INFO.model_copy(
        update={
            "task": "text-generation-with-past",
            "family": "decoder",
            "model_type": "qwen2",
            "parameter_count": 500_000_000,
            "dims": ModelDims(
                hidden_size=896,
                num_layers=24,
                num_attention_heads=14,
                num_key_value_heads=2,
                head_dim=64,
                vocab_size=151_936,
                max_positions=32_768,
            ),
        }
    )
    profile = CATALOG.profile("raspberry-pi-5")
    result = _plan("raspberry-pi-5", lm)
    memory = {c.recipe.id: c.estimated_memory_mb for c in result.candidates}
    fp32_cache = FAMILY.estimate_activation_mb(lm, profile, 4)
    f16_cache = FAMILY.estimate_activation_mb(lm, profile, 2)
    assert fp32_cache - f16_cache > 10  # 24 layers x 2 heads x 64 x 2048 x 2 bytes x 2
    overheads = CATALOG.targets["onnxruntime"].runtime_overhead_mb - (
        CATALOG.targets["llama.cpp"].runtime_overhead_mb
    )
    # gguf-q8_0 and onnx-int8-weight expect the same weight size (0.27 of fp32).
    difference = memory["onnx-int8-weight"] - memory["gguf-q8_0"]
    assert abs(difference - (fp32_cache - f16_cache + overheads)) < 1e-6


def test_openvino_language_models_count_their_weights_twice() -> None:
    """OpenVINO's runner holds a second compile of a language model for generated tokens
    (one-token shapes), with its own weights: the memory estimate says so; encoders don't."""
    lm = SMOLLM2_SHAPE
    result = _plan("intel-n100", lm)
    memory = {c.recipe.id: c.estimated_memory_mb for c in result.candidates}
    weights = lm.parameter_count * 4 / (1024 * 1024) * 0.27  # both int8-weight recipes
    overheads = (
        CATALOG.targets["openvino"].runtime_overhead_mb
        - CATALOG.targets["onnxruntime"].runtime_overhead_mb
    )
    difference = memory["openvino-int8-weight"] - memory["onnx-int8-weight"]
    assert abs(difference - (weights + overheads)) < 0.1  # rounded to 0.1 MB
    encoder = {c.recipe.id: c.estimated_memory_mb for c in _plan("intel-n100").candidates}
    assert abs(encoder["openvino-fp32"] - encoder["onnx-fp32"] - overheads) < 0.1
