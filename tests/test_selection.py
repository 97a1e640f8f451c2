"""Choosing the winner when the build host is not the device: estimates rank, host timings
are reported as the host's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_search import CATALOG, _attempt, _candidate

from edgeport.errors import BadInputError
from edgeport.host import HOST_FEATURES_ENV, probe_cpu
from edgeport.schemas import CpuSpec
from edgeport.selection import (
    SpeedBasis,
    choose,
    contender_keys,
    host_gap,
    lead_is_clear,
    prune_reason,
    speed_basis,
)

VNNI_PROFILE = CATALOG.profile("x86-64-avx512-vnni")
AVX2_ONLY = ["sse4_2", "avx", "avx2", "fma", "f16c"]


def _host(features: list[str], arch: str = "x86_64") -> CpuSpec:
    return CpuSpec.model_validate({"arch": arch, "cores": 2, "features": features})


def test_a_host_with_every_profile_feature_ranks_by_its_own_timings() -> None:
    assert host_gap(VNNI_PROFILE, _host([*VNNI_PROFILE.cpu.features, "amx_int8"])) == ""


def test_a_host_without_vnni_says_so() -> None:
    gap = host_gap(VNNI_PROFILE, _host(AVX2_ONLY))
    assert gap.startswith("this host has no avx512_vnni, avx512bw, avx512f, avx512vl")


def test_another_architecture_is_never_the_device() -> None:
    assert "this host is x86_64 and raspberry-pi-5 is arm64" in host_gap(
        CATALOG.profile("raspberry-pi-5"), _host(AVX2_ONLY)
    )


def test_estimates_rank_when_the_host_lacks_the_devices_isa() -> None:
    """int8 measured slower than fp32 on an AVX2 host still wins for a VNNI device."""
    int8 = _attempt("openvino-int8-static", "passed", ratio=0.7, cosine=0.995)
    fp32 = _attempt("onnx-fp32-fused", "passed", ratio=0.6, cosine=1.0)
    candidates = [_candidate("openvino-int8-static", 3.0), _candidate("onnx-fp32-fused", 1.6)]
    on_host = speed_basis(VNNI_PROFILE, _host(list(VNNI_PROFILE.cpu.features)), candidates)
    assert choose([int8, fp32], "latency", on_host) is fp32
    elsewhere = speed_basis(VNNI_PROFILE, _host(AVX2_ONLY), candidates)
    assert not elsewhere.host_timings_rank
    assert choose([int8, fp32], "latency", elsewhere) is int8
    assert "measured on this host" in elsewhere.describe(VNNI_PROFILE.id)


def test_pruning_uses_the_estimates_when_they_rank() -> None:
    passed = [_attempt("openvino-int8-static", "passed", ratio=0.9, cosine=0.995)]
    basis = SpeedBasis("this host has no avx512_vnni", {"openvino-int8-static": 0.33})
    slower = _candidate("onnx-fp32-fused", 1.6)
    assert "cannot beat a passing candidate estimated at 0.33x" in prune_reason(
        slower, passed, "latency", basis
    )
    assert prune_reason(_candidate("openvino-int4-weight", 4.0), passed, "latency", basis) == ""


def test_host_features_are_injectable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HOST_FEATURES_ENV, "avx2, fma")
    assert probe_cpu().features == ["avx2", "fma"]
    monkeypatch.setenv(HOST_FEATURES_ENV, "avx2,warp_drive")
    with pytest.raises(BadInputError, match="unknown feature"):
        probe_cpu()


def test_report_says_latencies_were_taken_on_a_host_without_vnni(
    tiny_bert: Path, tmp_path: Path
) -> None:
    from conftest import run_cli

    out = tmp_path / "bundle"
    result = run_cli(
        "convert",
        str(tiny_bert),
        "--profile",
        "x86-64-avx512-vnni",
        "--out",
        str(out),
        "--recipe",
        "onnx-fp32",
        "--recipe",
        "onnx-int8-dynamic",
        "--json",
        env={HOST_FEATURES_ENV: ",".join(AVX2_ONLY)},
    )
    assert result.returncode == 0, result.stderr
    assert "this host has no avx512_vnni, avx512bw, avx512f, avx512vl" in result.stderr
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "**Speed ranking**: this host has no" in report
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert any("ranked by the recipes' speed estimates" in note for note in manifest["notes"])
    # The int8 recipe is estimated faster on a VNNI device: it ships if it passes.
    statuses = {a["recipe_id"]: a["status"] for a in manifest["attempts"]}
    if statuses.get("onnx-int8-dynamic") == "passed":
        assert manifest["recipe"]["id"] == "onnx-int8-dynamic"


def test_size_objective_takes_the_faster_of_two_near_equal_sizes() -> None:
    small_slow = _attempt("onnx-int4-weight", "passed", ratio=0.9, cosine=0.995, size=100 << 20)
    small_fast = _attempt("openvino-int4-weight", "passed", ratio=0.5, cosine=0.995, size=103 << 20)
    big_fast = _attempt("onnx-fp32", "passed", ratio=0.2, cosine=1.0, size=400 << 20)
    assert choose([small_slow, small_fast, big_fast], "size") is small_fast
    assert choose([small_slow, big_fast], "size") is small_slow


def test_contenders_are_the_passing_attempts_within_the_noise_of_the_best() -> None:
    attempts = [
        _attempt("best", "passed", ratio=0.30, cosine=0.995),
        _attempt("close", "passed", ratio=0.33, cosine=0.995),
        _attempt("slow", "passed", ratio=0.60, cosine=0.995),
        _attempt("fails", "failed", ratio=0.20, cosine=0.95),
    ]
    assert contender_keys(attempts) == ["best|", "close|"]


def test_the_lead_is_clear_only_when_no_round_overlaps() -> None:
    assert lead_is_clear({"a": [0.30, 0.31], "b": [0.35, 0.36]})
    assert not lead_is_clear({"a": [0.30, 0.37], "b": [0.35, 0.36]})
    assert lead_is_clear({"a": [0.30]})


def test_latency_within_the_noise_goes_to_the_plans_pick() -> None:
    """Host timings 4 % apart do not decide: the candidate the plan ranks first (its device
    estimate) wins, so a build under load ships what it ships on a quiet host."""
    planned_first = _attempt("openvino-int8-static", "passed", ratio=0.24, cosine=0.992)
    planned_later = _attempt("openvino-int8-weight", "passed", ratio=0.23, cosine=0.996)
    clearly_faster = _attempt("onnx-int8-dynamic", "passed", ratio=0.20, cosine=0.995)
    assert choose([planned_first, planned_later], "latency") is planned_first
    assert choose([planned_first, planned_later, clearly_faster], "latency") is clearly_faster
