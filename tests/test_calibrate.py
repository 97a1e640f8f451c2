"""Measured speedups feed the planner: `edgeport profiles calibrate` and calibration files.

The planner tests use a hand-written calibration that disagrees with the recipes' guesses;
one test runs `profiles calibrate --on` against a real OpenSSH server on 127.0.0.1
(loopback_sshd.py), with tiny reference graphs, and plans with what it wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli
from loopback_sshd import Device, serve

from edgeport.calibrate import (
    GraphSpec,
    calibration_from_timings,
    check_calibration_device,
    check_destination,
    keys_to_measure,
    reference_onnx,
    runtimes_to_measure,
    write_calibration,
)
from edgeport.catalog import builtin_dir, calibration_problems, load_calibration, load_catalog
from edgeport.device import device_facts
from edgeport.errors import BadInputError, CatalogError, DoesNotFitError, UnsupportedError
from edgeport.planner import plan
from edgeport.schemas import CalibrationMethod, ModelDims, ModelInfo, calibration_keys

CATALOG = load_catalog()
BASELINE = CATALOG.baseline
ALL_TARGETS = frozenset(CATALOG.targets)
PROFILE = "x86-64-avx512-vnni"
MINILM = ModelInfo(
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
TINYLLAMA = ModelInfo(
    source="TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    local_path=Path("/nonexistent"),
    task="text-generation-with-past",
    family="decoder",
    model_type="llama",
    parameter_count=1_100_048_384,
    weight_dtype="BF16",
    weight_bytes=2_200_096_768,
    files=[],
    dims=ModelDims(
        hidden_size=2048,
        num_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
        max_positions=2048,
    ),
)
# The recipes guess that OpenVINO's static int8 (3.3x) beats ONNX Runtime's dynamic int8
# (1.9x) on a VNNI CPU; this device measured the opposite.
HAND_WRITTEN = """\
profile: x86-64-avx512-vnni
date: 2026-11-23T10:00:00Z
edgeport_version: 0.0.0
measured_on:
  cpu: Test Xeon 8480
  arch: x86_64
  features: [avx2, avx512f, avx512_vnni]
  cores: 8
speedups:
  onnxruntime: {fp32: 1.0, int8-dynamic: 2.6}
  openvino: {fp32: 0.9, int8-static: 1.2}
speedups_vs_own_fp32:
  openvino: {fp32: 1.0, int8-static: 1.333}
decode_speedups:
  onnxruntime: {fp32: 1.0, int4-weight: 1.5}
latency_ms:
  batch:
    onnxruntime: {fp32: 26.0, int8-dynamic: 10.0}
    openvino: {fp32: 28.889, int8-static: 21.667}
"""


def _calibration_dir(tmp_path: Path, text: str = HAND_WRITTEN, name: str = PROFILE) -> Path:
    folder = tmp_path / "calibrations"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    return folder


def _plan(calibration: Any = None, model: ModelInfo = MINILM, profile: str = PROFILE) -> Any:
    return plan(
        model,
        CATALOG.profile(profile),
        CATALOG.recipes.values(),
        CATALOG.targets,
        ALL_TARGETS,
        calibration=calibration,
    )


# --------------------------------------------------------------------------- planner


def test_measured_speedups_reorder_the_plan_and_say_so(tmp_path: Path) -> None:
    calibration = load_calibration(_calibration_dir(tmp_path) / f"{PROFILE}.yaml", BASELINE)
    guessed = [c.recipe.id for c in _plan().candidates]
    assert guessed.index("openvino-int8-static") < guessed.index("onnx-int8-dynamic")

    result = _plan(calibration)
    ids = [c.recipe.id for c in result.candidates]
    assert ids.index("onnx-int8-dynamic") < ids.index("openvino-int8-static")
    by_id = {c.recipe.id: c for c in result.candidates}
    # ONNX Runtime's dynamic int8: measured 2.6x, times the recipe's fusion and padding
    # removal (graph_speedup 1.5), which the reference graphs do not have.
    dynamic = by_id["onnx-int8-dynamic"]
    assert dynamic.speed_source == "measured" and dynamic.estimated_speedup == 3.9
    assert "measured 2.60x ONNX Runtime fp32 (onnxruntime int8-dynamic)" in dynamic.reason
    assert "on Test Xeon 8480 (calibration 2026-11-23)" in dynamic.reason
    assert "x 1.5 estimated for fusion and padding removal" in dynamic.reason
    assert "instead of the recipe's estimate: int8 dot-product instructions" in dynamic.reason
    # The per-tensor recipe has no graph rewrites: the measurement as it is.
    assert by_id["onnx-int8-dynamic-per-tensor"].estimated_speedup == 2.6
    assert by_id["openvino-int8-static"].estimated_speedup == round(1.2 * 1.45, 2)
    # Static int8 on ONNX Runtime was not measured (neither format nor the scheme): guessed.
    qdq = by_id["onnx-int8-static-qdq"]
    assert qdq.speed_source == "estimated" and "measured" not in qdq.reason
    fp32 = by_id["onnx-fp32"]
    assert fp32.speed_source == "measured" and fp32.estimated_speedup == 1


def test_convert_says_measured_speedups_rank_when_the_host_is_unlike_the_device(
    tmp_path: Path,
) -> None:
    from edgeport.schemas import CpuSpec
    from edgeport.selection import speed_basis

    calibration = load_calibration(_calibration_dir(tmp_path) / f"{PROFILE}.yaml", BASELINE)
    candidates = _plan(calibration).candidates
    avx2_host = CpuSpec(arch="x86_64", cores=2, features=["avx2", "fma"])
    basis = speed_basis(CATALOG.profile(PROFILE), avx2_host, candidates)
    measured = sum(c.speed_source == "measured" for c in candidates)
    assert basis.estimated_ratio["onnx-int8-dynamic"] == round(1 / 3.9, 4)
    assert f"speedups measured on {PROFILE} (its calibration: {measured} of" in basis.describe(
        PROFILE
    )
    guessed = speed_basis(CATALOG.profile(PROFILE), avx2_host, _plan().candidates)
    assert f"ranked by the recipes' speed estimates for {PROFILE}" in guessed.describe(PROFILE)


def test_decoders_use_the_one_token_measurement_with_the_kv_cache(tmp_path: Path) -> None:
    calibration = load_calibration(_calibration_dir(tmp_path) / f"{PROFILE}.yaml", BASELINE)
    by_id = {c.recipe.id: c for c in _plan(calibration, TINYLLAMA).candidates}
    int4 = by_id["onnx-int4-weight"]
    assert int4.speed_source == "measured"
    # 1.5x on the weights' share of a token: less than 1.5x overall (the KV cache is fp32).
    assert 1.0 < int4.estimated_speedup < 1.5
    assert "(onnxruntime int4-weight, one token)" in int4.reason
    assert "tokens/s" in int4.reason  # the bandwidth estimate is still shown
    # OpenVINO's int4 has no one-token measurement: its estimate stays.
    assert by_id["openvino-int4-weight"].speed_source == "estimated"


def test_a_calibration_does_not_speak_for_an_accelerator(tmp_path: Path) -> None:
    text = HAND_WRITTEN.replace("x86-64-avx512-vnni", "intel-core-ultra-npu")
    calibration = load_calibration(
        _calibration_dir(tmp_path, text, "intel-core-ultra-npu") / "intel-core-ultra-npu.yaml",
        BASELINE,
    )
    for candidate in _plan(calibration, profile="intel-core-ultra-npu").candidates:
        if candidate.device not in {"CPU", "CPUExecutionProvider"}:
            assert candidate.speed_source == "estimated", candidate.key


def test_recipes_match_the_most_specific_key() -> None:
    assert calibration_keys(CATALOG.recipe("onnx-int8-static-qdq")) == (
        "int8-static-qdq",
        "int8-static",
        "int8",
    )
    assert calibration_keys(CATALOG.recipe("openvino-int8-static")) == ("int8-static", "int8")
    assert calibration_keys(CATALOG.recipe("onnx-fp32-fused")) == ("fp32",)
    assert keys_to_measure("onnxruntime", CATALOG.recipes.values()) == [
        "fp32",
        "fp16",
        "int8-dynamic",
        "int8-static-qdq",
        "int8-static-qoperator",
        "int8-weight",
        "int4-weight",
    ]


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (("int8-dynamic: 2.6", "int8-dynamc: 2.6"), "speedups.onnxruntime.int8-dynamc",
         "unknown key"),
        (("int8-dynamic: 2.6", "int8-dynamic: -2"), "speedups.onnxruntime.int8-dynamic", "greater"),
        (("  cores: 8\n", "  cores: 8\n  hostname: lab\n"), "measured_on.hostname", "unknown key"),
        (("profile: x86-64-avx512-vnni", "profile: raspberry-pi-5"), "profile", "file name"),
        (("int8-static: 1.333", "int8-static: 2.0"), "speedups_vs_own_fp32.openvino.int8-static",
         "disagrees with speedups.openvino.int8-static / speedups.openvino.fp32"),
        (("int8-dynamic: 10.0", "int8-dynamic: 20.0"), "speedups.onnxruntime.int8-dynamic",
         "latency_ms.batch"),
        (("date: 2026-11-23T10:00:00Z", "date: 2026-11-23T10:00:00"), "date", "timezone"),
    ],
)  # fmt: skip
def test_a_malformed_calibration_is_one_line_with_file_and_field(
    tmp_path: Path, edit: tuple[str, str], field: str, words: str
) -> None:
    assert edit[0] in HAND_WRITTEN
    folder = _calibration_dir(tmp_path, HAND_WRITTEN.replace(*edit))
    path = folder / f"{PROFILE}.yaml"
    _, problems = calibration_problems(path, BASELINE)
    assert problems and problems[0].startswith(f"{path}: {field}: "), problems
    assert words in problems[0] and "\n" not in problems[0]
    with pytest.raises(CatalogError) as caught:
        load_catalog(calibrations_dirs=[folder]).calibration(PROFILE)
    assert caught.value.exit_code == 2


def test_plan_json_says_which_numbers_it_used(tiny_bert: Path, tmp_path: Path) -> None:
    folder = _calibration_dir(tmp_path)
    result = run_cli("plan", str(tiny_bert), "--profile", PROFILE, "--json",
                     "--calibrations-dir", str(folder))  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["calibration"] == str(folder / f"{PROFILE}.yaml")
    sources = {c["recipe"]: c["speed_source"] for c in payload["candidates"]}
    assert sources["onnx-int8-dynamic"] == "measured"
    assert sources["onnx-int8-static-qdq"] == "estimated"
    ranks = {c["recipe"]: c["rank"] for c in payload["candidates"]}
    assert ranks["onnx-int8-dynamic"] < ranks["openvino-int8-static"]
    # Without it: the recipes' estimates, in their order; the table says so.
    plain = run_cli("plan", str(tiny_bert), "--profile", PROFILE)
    assert plain.returncode == 0, plain.stderr
    assert "the recipes' estimates" in plain.stderr and "estimated" in plain.stderr
    table = run_cli("plan", str(tiny_bert), "--profile", PROFILE,
                    env={"EDGEPORT_CALIBRATIONS_DIR": str(folder)})  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "measured on the device for" in table.stderr and "3.90x measured" in table.stderr
    # A malformed one stops the plan before any work: one line, exit 2.
    (folder / f"{PROFILE}.yaml").write_text(HAND_WRITTEN.replace("2.6", "'fast'"))
    bad = run_cli("plan", str(tiny_bert), "--profile", PROFILE, "--calibrations-dir", str(folder))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "speedups.onnxruntime.int8-dynamic" in lines[0], lines


def test_a_device_that_cannot_stand_for_the_profile_is_refused_first() -> None:
    profile = CATALOG.profile("raspberry-pi-5")  # arm64: neon, fp16, dotprod
    pi4 = device_facts({"machine": "aarch64", "cpuinfo": "Features : fp asimd crc32\nModel : Pi 4"})
    pi4["packages"] = {"numpy": "2.0", "onnxruntime": "1.31.1"}
    with pytest.raises(DoesNotFitError, match="lacks fp16, dotprod, which profile raspberry-pi-5"):
        check_calibration_device(profile, pi4, "ssh://pi4", "python3", BASELINE)
    x86 = device_facts({"machine": "x86_64", "cpuinfo": "flags : avx2"})
    x86["packages"] = pi4["packages"]
    with pytest.raises(DoesNotFitError, match="is x86_64"):
        check_calibration_device(profile, x86, "ssh://nuc", "python3", BASELINE)
    pi4["packages"] = {"numpy": "2.0", "onnxruntime": None}
    with pytest.raises(UnsupportedError, match="pip install onnxruntime"):
        check_calibration_device(profile, pi4, "ssh://pi4", "python3", BASELINE)


def test_runtimes_the_device_or_this_host_lacks_are_recorded_not_measured() -> None:
    profile = CATALOG.profile("intel-n100")  # openvino first, then onnxruntime
    runtimes, skipped = runtimes_to_measure(
        profile, {"numpy": "2.0", "onnxruntime": "1.31.1", "openvino": None}, "python3", BASELINE
    )
    assert runtimes == ["onnxruntime"]
    assert [(s.target, s.key) for s in skipped] == [("openvino", None), ("llama.cpp", None)]
    assert "pip install openvino" in skipped[0].reason
    # llama.cpp runs GGUF, which calibration has no reference graphs in (yet).
    assert "no reference graphs" in skipped[1].reason
    runtimes, skipped = runtimes_to_measure(
        profile,
        {"numpy": "2.0", "onnxruntime": "1.31.1", "openvino": "2026.4.1"},
        "python3",
        BASELINE,
    )
    assert runtimes == ["onnxruntime", "openvino"]  # the baseline first
    assert [s.target for s in skipped] == ["llama.cpp"]


def test_the_catalogues_baseline_recipe_is_the_yardstick_not_a_constant(tmp_path: Path) -> None:
    path = _calibration_dir(tmp_path) / f"{PROFILE}.yaml"
    assert calibration_problems(path, BASELINE) == (load_calibration(path, BASELINE), [])
    # A catalogue whose baseline were OpenVINO fp32 would read the same file differently.
    openvino = CATALOG.recipe("openvino-fp32").model_copy(update={"baseline": True})
    _, problems = calibration_problems(path, openvino)
    assert f"{path}: speedups.openvino.fp32: 0.9 disagrees with the baseline itself" in problems[0]
    profile = CATALOG.profile("intel-n100")
    packages = {"numpy": "2.0", "onnxruntime": "1.31.1", "openvino": "2026.4.1"}
    runtimes, _ = runtimes_to_measure(profile, packages, "python3", openvino)
    assert runtimes == ["openvino", "onnxruntime"]  # the baseline first


def test_the_speedups_are_ratios_of_the_devices_medians() -> None:
    profile = CATALOG.profile(PROFILE)
    facts = {
        "cpu": {"name": "Board", "arch": "x86_64", "features": ["avx2"], "flags": "fpu avx2"},
        "cores": 4,
        "memory_mb": {"total": 8000},
        "os": "Linux",
        "python": {"version": "3.12.0"},
        "packages": {"numpy": "2.0", "onnxruntime": "1.31.1", "openvino": None},
    }
    results = [
        {"target": "onnxruntime", "key": "fp32", "shapes": {"batch": 40.0, "decode": 2.0}},
        {"target": "onnxruntime", "key": "int8-dynamic", "shapes": {"batch": 16.0, "decode": 1.6}},
        {"target": "openvino", "key": "fp32", "shapes": {"batch": 50.0, "decode": 4.0}},
        {"target": "openvino", "key": "int8-static", "shapes": {"batch": 10.0, "decode": 2.0}},
        {"target": "onnxruntime", "key": "fp16", "error": "NotImplemented: no fp16 MatMul"},
    ]
    method = CalibrationMethod(
        graph="g", layers=1, hidden=64, shapes={"batch": [1, 8, 64]}, threads=4, warmup=0, runs=1
    )
    from datetime import UTC, datetime

    calibration = calibration_from_timings(
        profile, facts, results, method, [], datetime(2026, 11, 23, tzinfo=UTC), BASELINE
    )
    assert calibration.speedups == {
        "onnxruntime": {"fp32": 1.0, "int8-dynamic": 2.5},
        "openvino": {"fp32": 0.8, "int8-static": 4.0},
    }
    assert calibration.speedups_vs_own_fp32["openvino"] == {"fp32": 1.0, "int8-static": 5.0}
    assert calibration.decode_speedups["onnxruntime"]["int8-dynamic"] == 1.25
    assert calibration.problems(BASELINE) == []
    assert [(s.target, s.key) for s in calibration.skipped] == [("onnxruntime", "fp16")]
    assert "no fp16 MatMul" in calibration.skipped[0].reason
    assert calibration.measured_on.packages == {"numpy": "2.0", "onnxruntime": "1.31.1"}


def test_the_reference_graph_is_deterministic_and_has_the_matmuls_recipes_change() -> None:
    spec = GraphSpec(layers=2, hidden=32, tokens=8)
    first, second = reference_onnx(spec), reference_onnx(spec)
    assert first.SerializeToString() == second.SerializeToString()
    matmuls = [n for n in first.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2 * 6
    assert spec.weights == 2 * (4 * 32 * 32 + 2 * 32 * 128)


def test_the_destination_is_checked_before_any_work(tmp_path: Path) -> None:
    existing = tmp_path / "board.yaml"
    existing.write_text("old")
    with pytest.raises(BadInputError, match="exists: pass --force"):
        check_destination(existing, force=False)
    check_destination(existing, force=True)
    with pytest.raises(BadInputError, match=r"expected a \.yaml file"):
        check_destination(tmp_path / "board.json", force=False)
    with pytest.raises(BadInputError, match="exists"):
        write_calibration("new", existing, force=False)
    assert existing.read_text() == "old"
    write_calibration("new", existing, force=True)
    assert existing.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.yaml"]  # no partial file


def test_shipped_calibrations_are_valid_and_name_known_profiles() -> None:
    folder = builtin_dir("calibrations")
    for path in sorted(folder.glob("*.y*ml")) if folder.is_dir() else []:
        calibration, problems = calibration_problems(path, BASELINE)
        assert calibration is not None, problems
        assert calibration.profile in CATALOG.profiles, path


# --------------------------------------------------------------------------- real sshd


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    yield from serve(tmp_path_factory)


def test_calibrate_on_a_device_then_plan_with_it(
    sshd: Device, tiny_bert: Path, tmp_path: Path
) -> None:
    """The loopback device is this machine: its probed profile, tiny graphs, few runs."""
    from edgeport.host import probe_host_profile
    from edgeport.profile_tools import detected_profile_yaml

    board = probe_host_profile(CATALOG.targets, "loopback-board")
    profile = tmp_path / "loopback-board.yaml"
    profile.write_text(detected_profile_yaml(board, write_id=True))
    out = tmp_path / "calibrations" / "loopback-board.yaml"
    small = ["--layers", "1", "--hidden", "64", "--tokens", "32", "--runs", "3", "--warmup", "1"]
    result = run_cli("profiles", "calibrate", str(profile), "--out", str(out), "--json",
                     *small, *sshd.args())  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["file"] == str(out)
    calibration = load_calibration(out, BASELINE)  # validates: schema, file name, tables agree
    assert calibration.profile == "loopback-board"
    assert calibration.measured_on.cpu == board.cpu.name
    assert set(board.cpu.features) <= set(calibration.measured_on.features)
    assert calibration.measured_on.packages["onnxruntime"]
    assert calibration.method is not None and calibration.method.threads == board.cpu.cores
    assert calibration.method.shapes == {"batch": [1, 32, 64], "decode": [1, 1, 64]}
    runtimes = [r.target for r in board.runtimes]
    measured = {t: set(row) for t, row in calibration.speedups.items()}
    assert calibration.speedups["onnxruntime"]["fp32"] == 1.0
    skipped = {(s.target, s.key) for s in calibration.skipped}
    for key in keys_to_measure("onnxruntime", CATALOG.recipes.values()):
        assert key in measured["onnxruntime"] or ("onnxruntime", key) in skipped, key
    if "openvino" in runtimes:
        assert {"fp32", "int8-static", "int4-weight"} <= measured["openvino"]
        assert calibration.speedups_vs_own_fp32["openvino"]["fp32"] == 1.0
    assert set(calibration.decode_speedups) == set(calibration.speedups)
    variants = calibration.method.variants
    assert "MatMulNBits 4-bit" in variants["onnxruntime/int4-weight"]
    assert "quantize_static QDQ" in variants["onnxruntime/int8-static-qdq"]
    # What was printed, and what was left: the file only, nothing on the device.
    assert "x ORT fp32" in result.stderr and f"wrote {out}" in result.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    assert sshd.leftovers() == []
    text = out.read_text()
    assert text.startswith("# Calibration of profile loopback-board") and "ssh://" not in text
    assert yaml.safe_load(text)["profile"] == "loopback-board"

    # Refused before any work without --force; the file is kept.
    again = run_cli("profiles", "calibrate", str(profile), "--out", str(out), *sshd.args())
    assert again.returncode == 2 and "pass --force" in again.stderr
    assert out.read_text() == text

    # The plan uses it for this profile, and says so.
    planned = run_cli("plan", str(tiny_bert), "--profile", str(profile), "--json",
                      "--calibrations-dir", str(out.parent))  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    candidates = json.loads(planned.stdout)["candidates"]
    assert candidates and all(c["speed_source"] == "measured" for c in candidates), candidates
    fp32 = next(c for c in candidates if c["recipe"] == "onnx-fp32")
    assert fp32["estimated_speedup"] == 1.0 and "calibration" in fp32["reason"]
