"""The device catalogue: every profile plans the reference models sensibly.

Each profile × reference model gets either candidates or drops whose reasons say what is
missing; and no profile is ever offered a candidate its hardware cannot run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgeport.catalog import load_catalog
from edgeport.planner import plan
from edgeport.schemas import DeviceProfile, ModelDims, ModelInfo, Plan, Recipe

CATALOG = load_catalog()
ALL_TARGETS = frozenset(CATALOG.targets)

# The reference families of the test suite, described directly (no download).
MINILM = ModelInfo(
    source="sentence-transformers/all-MiniLM-L6-v2",
    local_path=Path("/nonexistent"),
    task="feature-extraction",
    family="encoder",
    model_type="bert",
    parameter_count=22_713_216,
    weight_dtype="F32",
    weight_bytes=90_852_864,
    files=["model.safetensors"],
    dims=ModelDims(
        hidden_size=384, num_layers=6, num_attention_heads=12, vocab_size=30522, max_positions=512
    ),
    pooling="mean",
    normalize_embeddings=True,
    max_length=256,
)
TINYLLAMA = ModelInfo(
    source="TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    local_path=Path("/nonexistent"),
    task="text-generation-with-past",
    family="decoder",
    model_type="llama",
    parameter_count=1_100_048_384,
    weight_dtype="BF16",
    weight_bytes=2_200_096_768,
    files=["model.safetensors"],
    dims=ModelDims(
        hidden_size=2048,
        num_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=64,
        vocab_size=32000,
        max_positions=2048,
    ),
    max_length=2048,
)
REFERENCE_MODELS = {"minilm-encoder": MINILM, "tinyllama-decoder": TINYLLAMA}

# A reason must say what is missing; memory drops must carry both numbers.
CLEAR_REASON = {
    "target": r"unknown target",
    "runtime": r"does not run .+ \(runs: .+\)",
    "family": r"made for .+ models, not \w+",
    "isa": r"needs one of .+; .+ has",
    "precision": r"(has no native \w+|does not run \w+)",
    "memory": r"needs ~[\d,]+ MB but .+ ~[\d,]+ MB \(\d+% of [\d,]+ MB\)",
    "extra": r"not installed on this host: pip install",
}

EXPECTED_DEVICES = {
    "raspberry-pi-4",
    "raspberry-pi-5",
    "nvidia-jetson-orin-nano",
    "intel-n100",
    "intel-core-ultra-npu",
    "snapdragon-8-gen-3",
    "apple-m2",
    "amd-ryzen-7-7840u",
    "x86-64-avx2",
    "x86-64-avx512-vnni",
    "aws-graviton3",
    "raspberry-pi-3-b-plus",
}

PROFILE_IDS = sorted(CATALOG.profiles)


def _plan(model: ModelInfo, profile: DeviceProfile, recipes: list[Recipe] | None = None) -> Plan:
    chosen = list(CATALOG.recipes.values()) if recipes is None else recipes
    return plan(model, profile, chosen, CATALOG.targets, ALL_TARGETS)


def _recipe(recipe_id: str, target: str, scheme: str = "none", **requires: object) -> Recipe:
    return Recipe.model_validate(
        {
            "id": recipe_id,
            "description": "test recipe",
            "target": target,
            "safety": 0,
            "quantize": {"scheme": scheme},
            "requires": requires,
            "expect": {"size_factor": 0.5 if scheme == "fp16" else 1.0, "speedup": 1.0},
        }
    )


def test_catalogue_has_the_reference_devices_each_citing_a_source() -> None:
    assert set(CATALOG.profiles) >= EXPECTED_DEVICES
    for profile in CATALOG.profiles.values():
        assert profile.source, f"{profile.id} does not cite its source"


@pytest.mark.parametrize("model_name", sorted(REFERENCE_MODELS))
@pytest.mark.parametrize("profile_id", PROFILE_IDS)
def test_every_profile_gets_candidates_or_clear_reasons(profile_id: str, model_name: str) -> None:
    model = REFERENCE_MODELS[model_name]
    result = _plan(model, CATALOG.profiles[profile_id])
    assert result.candidates or result.dropped, (
        f"no recipe at all for {model.family} models: add one to recipes/"
    )
    for dropped in result.dropped:
        assert re.search(CLEAR_REASON[dropped.code], dropped.reason), (
            f"{profile_id} / {dropped.recipe_id}: unclear reason {dropped.reason!r}"
        )


@pytest.mark.parametrize("profile_id", PROFILE_IDS)
def test_a_small_encoder_runs_on_every_device(profile_id: str) -> None:
    result = _plan(MINILM, CATALOG.profiles[profile_id])
    assert result.candidates, [d.reason for d in result.dropped]


@pytest.mark.parametrize("model_name", sorted(REFERENCE_MODELS))
@pytest.mark.parametrize("profile_id", PROFILE_IDS)
def test_no_candidate_the_hardware_cannot_run(profile_id: str, model_name: str) -> None:
    profile = CATALOG.profiles[profile_id]
    result = _plan(REFERENCE_MODELS[model_name], profile)
    for candidate in result.candidates:
        runtime = profile.runtime(candidate.target.id)
        assert runtime is not None, f"{candidate.key}: {profile_id} lacks {candidate.target.id}"
        assert candidate.device in runtime.devices
        recipe = candidate.recipe
        if recipe.requires.hardware_precision:
            assert recipe.precision in profile.hardware_precisions(candidate.device), candidate.key
        if recipe.requires.cpu_features_any:
            assert profile.feature_set & set(recipe.requires.cpu_features_any), candidate.key
        assert candidate.estimated_memory_mb <= profile.usable_memory_mb


def test_fp16_only_where_the_hardware_has_fp16_arithmetic() -> None:
    fp16 = _recipe("test-fp16", "onnxruntime", "fp16", hardware_precision=True)
    for profile in CATALOG.profiles.values():
        runtime = profile.runtime("onnxruntime")
        if runtime is None:
            continue
        native = "fp16" in profile.hardware_precisions(runtime.devices[0])
        result = _plan(MINILM, profile, [fp16])
        assert bool(result.candidates) == native, profile.id
        if not native:
            assert [d.code for d in result.dropped] == ["precision"]
    # Spot checks against the vendor data: Cortex-A72 has no fp16 arithmetic, A76 has.
    assert not _plan(MINILM, CATALOG.profiles["raspberry-pi-4"], [fp16]).candidates
    assert not _plan(MINILM, CATALOG.profiles["x86-64-avx2"], [fp16]).candidates
    assert _plan(MINILM, CATALOG.profiles["raspberry-pi-5"], [fp16]).candidates
    assert _plan(MINILM, CATALOG.profiles["apple-m2"], [fp16]).candidates


def test_a_runtime_the_device_lacks_is_never_planned() -> None:
    openvino = _recipe("test-openvino-fp32", "openvino")
    for profile_id in ("raspberry-pi-4", "raspberry-pi-3-b-plus", "apple-m2", "snapdragon-8-gen-3"):
        result = _plan(MINILM, CATALOG.profiles[profile_id], [openvino])
        assert not result.candidates
        assert [d.code for d in result.dropped] == ["runtime"]
    intel = _plan(MINILM, CATALOG.profiles["intel-n100"], [openvino])
    assert [c.device for c in intel.candidates] == ["CPU"]


def test_isa_requirements_follow_the_profiles() -> None:
    dot = _recipe(
        "test-int8-dot", "onnxruntime", "int8-dynamic", cpu_features_any=["dotprod", "i8mm"]
    )
    assert not _plan(MINILM, CATALOG.profiles["raspberry-pi-4"], [dot]).candidates
    assert _plan(MINILM, CATALOG.profiles["raspberry-pi-5"], [dot]).candidates
    assert _plan(MINILM, CATALOG.profiles["aws-graviton3"], [dot]).candidates


def test_no_recipe_for_a_family_is_a_clear_reason() -> None:
    encoder_only = _recipe("test-encoder-only", "onnxruntime", families=["encoder"])
    result = _plan(TINYLLAMA, CATALOG.profiles["x86-64-avx512-vnni"], [encoder_only])
    assert not result.candidates
    assert [d.code for d in result.dropped] == ["family"]
    assert "made for encoder models, not decoder" in result.dropped[0].reason


def test_one_gb_board_drops_a_1b_decoder_with_the_numbers() -> None:
    board = CATALOG.profiles["raspberry-pi-3-b-plus"]
    assert board.memory_mb == 1024
    result = _plan(TINYLLAMA, board)
    assert not result.candidates
    memory_drops = [d for d in result.dropped if d.code == "memory"]
    assert memory_drops, [d.reason for d in result.dropped]
    budget = f"~{board.usable_memory_mb:,.0f} MB"
    for dropped in memory_drops:
        needed = re.search(r"needs ~([\d,]+) MB", dropped.reason)
        assert needed, dropped.reason
        # fp32 weights alone are 4.4 GB; even fp16 or int8 weights exceed ~600 MB.
        assert int(needed.group(1).replace(",", "")) > board.usable_memory_mb
        assert budget in dropped.reason and "of 1,024 MB" in dropped.reason
    # The same board still runs the small encoder: the drop is about size, not the board.
    assert _plan(MINILM, board).candidates
