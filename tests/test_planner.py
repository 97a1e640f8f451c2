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
