"""gguf-fit and --max-size: the greedy allocator on synthetic sensitivities, the fit on a
tiny random decoder (llama.cpp's fallbacks for rows a K-quant block does not fit), the
planner's size drops, the CLI's exit codes; the slow test converts tiny-llama-pydoc under
a 6 MB limit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_LLAMA, build_tiny_decoder, run_cli

from edgeport.catalog import load_catalog
from edgeport.errors import DoesNotFitError
from edgeport.hub import resolve
from edgeport.model_info import inspect_model
from edgeport.planner import plan
from edgeport.schemas import Attempt
from edgeport.selection import verdict_for

INSTALL = 'pip install -c constraints.txt "edgeport[gguf]"'
try:
    import gguf
    import llama_cpp  # noqa: F401
except ImportError:
    pytest.skip(f"llama.cpp target not installed: {INSTALL}", allow_module_level=True)

from edgeport.backends.gguf_quantize import (  # noqa: E402
    activation_importance,
    fit_types,
    fitting_types,
)
from edgeport.backends.gguf_writer import write_gguf  # noqa: E402
from edgeport.backends.llama_cpp import fit_to_budget, gguf_tensor_types, quantize  # noqa: E402

needs_tiny_llama = pytest.mark.skipif(
    not (TINY_LLAMA / "tokenizer.json").is_file(), reason=f"{TINY_LLAMA} is absent"
)
CATALOG = load_catalog()
KINDS = ["Q4_K", "Q5_K", "Q6_K", "Q8_0"]

# ------------------------------------------------------------- the allocator, pure


def options(errors: dict[str, list[float]], sizes: tuple[int, ...] = (45, 55, 66, 85)) -> dict:
    return {
        name: [(kind, size, error) for kind, size, error in zip(KINDS, sizes, errs, strict=True)]
        for name, errs in errors.items()
    }


def test_fit_never_exceeds_the_budget() -> None:
    rng = np.random.default_rng(0)
    errors = {f"t{i}": sorted(rng.uniform(0, 10, 4).tolist(), reverse=True) for i in range(20)}
    table = options(errors)
    for budget in range(20 * 45, 20 * 85 + 1, 37):
        chosen = fit_types(table, budget)
        sizes = {kind: size for kind, size, _ in table["t0"]}
        assert sum(sizes[kind] for kind in chosen.values()) <= budget
    # Room for everything: every tensor at its least error.
    assert set(fit_types(table, 20 * 85).values()) == {"Q8_0"}
    # No room above the cheapest mix: nothing upgraded.
    assert set(fit_types(table, 20 * 45).values()) == {"Q4_K"}


def test_fit_upgrades_the_largest_gain_per_byte_first() -> None:
    table = options(
        {
            "sensitive": [100.0, 20.0, 10.0, 9.0],  # 80 saved for 10 bytes
            "mild": [10.0, 6.0, 5.0, 4.0],
            "flat": [1.0, 0.9, 0.8, 0.7],
        }
    )
    chosen = fit_types(table, 3 * 45 + 10)
    assert chosen == {"sensitive": "Q5_K", "mild": "Q4_K", "flat": "Q4_K"}
    chosen = fit_types(table, 3 * 45 + 10 + 10)
    assert chosen["mild"] == "Q5_K" and chosen["flat"] == "Q4_K"


def test_fit_below_the_cheapest_mix_does_not_fit() -> None:
    table = options({"a": [3.0, 2.0, 1.0, 0.5], "b": [3.0, 2.0, 1.0, 0.5]})
    with pytest.raises(DoesNotFitError, match="cheapest mix"):
        fit_types(table, 2 * 45 - 1)
    assert DoesNotFitError.exit_code == 5


def test_fitting_types_take_llama_cpp_fallbacks() -> None:
    assert fitting_types(KINDS, 256) == KINDS
    # 64 values a row: no 256-value super-block; llama.cpp's fallbacks, without repeats.
    assert fitting_types(KINDS, 64) == ["Q5_0", "Q5_1", "Q8_0"]


# ------------------------------------------------------------- the fit on a real GGUF


@needs_tiny_llama
def test_fit_to_budget_on_a_tiny_decoder(tmp_path: Path) -> None:
    folder = build_tiny_decoder(tmp_path / "model")
    source = tmp_path / "export.gguf"
    write_gguf(folder, source, "f32")
    target = tmp_path / "model.gguf"
    quantize(source, target, "Q4_K_M", 1, token_embedding_type="Q8_0")
    rng = np.random.default_rng(0)
    texts = [{"input_ids": rng.integers(3, 4096, size=(1, 32))} for _ in range(2)]
    importance = activation_importance(folder, texts, 2)
    matrices = [n for n, _, d in gguf_tensor_types(target) if d >= 2 and n != "token_embd.weight"]

    cheapest = tmp_path / "cheapest.gguf"
    cheapest.write_bytes(target.read_bytes())
    fit_to_budget(source, cheapest, KINDS, importance, None)  # no budget: every one at Q8_0
    richest = cheapest.stat().st_size
    assert {k for n, k, _ in gguf_tensor_types(cheapest) if n in matrices} == {"Q8_0"}

    low = target.stat().st_size  # the Q4_K_M file's size: fallbacks Q5_0 here
    budget = (low + richest) // 2
    changed, notes = fit_to_budget(source, target, KINDS, importance, budget, limited=True)
    assert target.stat().st_size <= budget
    kinds = {k for n, k, _ in gguf_tensor_types(target) if n in matrices}
    assert kinds <= {"Q5_0", "Q5_1", "Q8_0"} and len(kinds) >= 2
    assert set(changed) == set(matrices) and "--max-size" in notes[0] and "upgraded" in notes[1]
    assert gguf.GGUFReader(str(target)).tensors  # a whole GGUF
    with pytest.raises(DoesNotFitError):
        fit_to_budget(source, target, KINDS, importance, low // 2)


# ------------------------------------------------------------- planner, CLI, verdict


@needs_tiny_llama
def test_planner_drops_candidates_over_max_size() -> None:
    info = inspect_model(resolve(str(TINY_LLAMA)))
    profile = CATALOG.profile("raspberry-pi-5")
    result = plan(
        info,
        profile,
        CATALOG.recipes.values(),
        CATALOG.targets,
        frozenset(CATALOG.targets),
        max_size_mb=4.5,
    )
    kept = {c.recipe.id for c in result.candidates}
    assert "gguf-fit" in kept and "gguf-q8_0" not in kept
    size_drops = {d.recipe_id: d for d in result.dropped if d.code == "size"}
    assert "gguf-q8_0" in size_drops and "--max-size 4.5" in size_drops["gguf-q8_0"].reason
    fit = next(c for c in result.candidates if c.recipe.id == "gguf-fit")
    assert fit.max_model_bytes == fit.size_budget_bytes == int(4.5 * 2**20)
    # Without a limit: the budget is what the device's memory leaves the weights.
    free = plan(info, profile, CATALOG.recipes.values(), CATALOG.targets, frozenset({"llama.cpp"}))
    fit = next(c for c in free.candidates if c.recipe.id == "gguf-fit")
    assert fit.max_model_bytes is None
    assert 0 < (fit.size_budget_bytes or 0) < profile.usable_memory_mb * 2**20


def test_over_size_attempts_do_not_fit() -> None:
    common = {"target_id": "t", "device": "CPU", "precision": "int4"}
    attempts = [
        Attempt(recipe_id="a", status="skipped", detail="over", over_size=True, **common),
        Attempt(recipe_id="b", status="error", detail="broken", **common),
    ]
    with pytest.raises(DoesNotFitError, match="does not fit the device"):
        verdict_for(attempts, "size", accept_degraded=False)


@needs_tiny_llama
@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_size_must_be_positive(value: str, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    args = ["-p", "raspberry-pi-5", "--max-size", value]
    result = run_cli("convert", str(TINY_LLAMA), *args, "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert "--max-size" in result.stderr and not out.exists()


@needs_tiny_llama
def test_max_size_too_small_exits_5(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = run_cli(
        "convert", str(TINY_LLAMA), "-p", "raspberry-pi-5", "--max-size", "1", "--out", str(out)
    )
    assert result.returncode == 5, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "size limit" in lines[-1] and "Traceback" not in result.stderr
    assert not out.exists()
    planned = run_cli("plan", str(TINY_LLAMA), "-p", "raspberry-pi-5", "--max-size", "1", "--json")
    assert planned.returncode == 5
    assert json.loads(planned.stdout)["error"]["exit_code"] == 5


# ------------------------------------------------------------- the real model (slow)


@needs_tiny_llama
@pytest.mark.slow
def test_gguf_fit_under_6_mb(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = run_cli(
        "convert",
        str(TINY_LLAMA),
        "-p",
        "raspberry-pi-5",
        "-r",
        "gguf-fit",
        "--max-size",
        "6",
        "--out",
        str(out),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["verdict"] == "passed" and payload["recipe"] == "gguf-fit"
    assert (out / "model.gguf").stat().st_size <= 6 * 2**20
    manifest = (out / "manifest.json").read_text(encoding="utf-8")
    assert "GGUF fit: budget 6.00 MB (--max-size)" in manifest
    assert "upgraded from the cheapest type" in manifest


def test_gguf_fit_recipe_fields() -> None:
    from pydantic import ValidationError

    from edgeport.schemas import Quantization

    recipe = CATALOG.recipe("gguf-fit")
    assert recipe.quantize.gguf_fit and recipe.quantize.importance_matrix
    assert recipe.quantize.gguf_fit_types == KINDS
    with pytest.raises(ValidationError, match="gguf_fit_types"):
        Quantization(scheme="gguf", gguf_type="Q4_K_M", gguf_fit=True)
    with pytest.raises(ValidationError):
        Quantization(scheme="int4-weight", gguf_fit=True, gguf_fit_types=["Q4_K"])
