"""The baseline (what every speedup and latency ratio is relative to) is declared once, as
data: `baseline: true` on exactly one recipe, checked when the catalogue is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeport.catalog import builtin_dir, load_catalog
from edgeport.errors import BadInputError
from edgeport.schemas import calibration_entry


def _user_recipe(folder: Path, recipe_id: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{recipe_id}.yaml"
    path.write_text(f"id: {recipe_id}\n{text}", encoding="utf-8")
    return path


def _fp32_recipe(target: str = "onnxruntime", extra: str = "") -> str:
    return (
        f"description: fp32\ntarget: {target}\nsafety: 0\n{extra}"
        "quantize:\n  scheme: none\nexpect:\n  size_factor: 1.0\n  speedup: 1.0\n"
    )


def test_the_builtin_baseline_is_onnx_runtime_fp32() -> None:
    baseline = load_catalog().baseline
    assert baseline.id == "onnx-fp32"
    assert calibration_entry(baseline) == ("onnxruntime", "fp32")


def test_a_second_baseline_is_one_line_naming_both_files(tmp_path: Path) -> None:
    extra = _user_recipe(
        tmp_path / "recipes", "my-ov-fp32", _fp32_recipe("openvino", "baseline: true\n")
    )
    with pytest.raises(BadInputError) as caught:
        load_catalog(recipes_dirs=[extra.parent])
    message = str(caught.value)
    assert "exactly one recipe must set `baseline: true`" in message and "\n" not in message
    assert str(extra) in message and str(builtin_dir("recipes") / "onnx-fp32.yaml") in message
    assert caught.value.exit_code == 2


def test_replacing_the_baseline_recipe_without_the_flag_leaves_none(tmp_path: Path) -> None:
    # A user's folder may replace a built-in recipe, and with it the declaration.
    folder = _user_recipe(tmp_path / "recipes", "onnx-fp32", _fp32_recipe()).parent
    with pytest.raises(BadInputError, match=r"`baseline: true` .*; found none$"):
        load_catalog(recipes_dirs=[folder])
    moved = _user_recipe(folder, "my-ov-fp32", _fp32_recipe("openvino", "baseline: true\n"))
    assert load_catalog(recipes_dirs=[moved.parent]).baseline.id == "my-ov-fp32"


def test_the_baseline_must_be_a_plain_export(tmp_path: Path) -> None:
    folder = _user_recipe(
        tmp_path / "recipes",
        "onnx-fp32",
        _fp32_recipe(extra="baseline: true\ngraph:\n  transformer_fusion: true\n"),
    ).parent
    with pytest.raises(BadInputError, match=r"onnx-fp32\.yaml: baseline: .*plain fp32 export"):
        load_catalog(recipes_dirs=[folder])
