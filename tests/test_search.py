"""The search over candidates: how variants grow, when candidates are skipped, the picture."""

from __future__ import annotations

from pathlib import Path

from edgeport.catalog import load_catalog
from edgeport.schemas import Attempt, Candidate, Measurement, MetricResult, ValidationReport
from edgeport.search import float_node_variants, with_float_nodes
from edgeport.selection import choose, prune_reason
from edgeport.tradeoff_plot import render_tradeoff_svg

CATALOG = load_catalog()


def _candidate(recipe_id: str, speedup: float, size_mb: float = 20.0) -> Candidate:
    return Candidate(
        recipe=CATALOG.recipe(recipe_id),
        target=CATALOG.targets[CATALOG.recipe(recipe_id).target],
        device="CPU",
        estimated_memory_mb=100.0,
        estimated_size_mb=size_mb,
        estimated_speedup=speedup,
        reason="test",
    )


def _attempt(
    recipe_id: str, status: str, ratio: float, cosine: float, size: int = 10 << 20
) -> Attempt:
    metric = MetricResult(
        name="embedding_cosine_min",
        value=cosine,
        threshold=0.99,
        higher_is_better=True,
        passed=cosine >= 0.99,
    )
    return Attempt(
        recipe_id=recipe_id,
        target_id="openvino",
        device="CPU",
        precision="int8",
        status=status,  # type: ignore[arg-type]
        validation=ValidationReport(
            task="feature-extraction",
            validation_samples=10,
            calibration_samples=5,
            outputs=[],
            metrics=[metric],
            failures=[] if cosine >= 0.99 else ["low"],
        ),
        measurement=Measurement(
            latency_ms=100 * ratio,
            latency_p90_ms=100 * ratio,
            runs=5,
            batch_size=32,
            threads=2,
            peak_memory_mb=50,
            model_bytes=size,
        ),
        latency_ratio=ratio,
    )


def test_variants_double_the_float_nodes_most_harmful_first() -> None:
    ranking = [(f"node{i}", i / 100) for i in range(12)]
    variants = list(float_node_variants(ranking))
    assert [len(v) for v in variants] == [1, 2, 4, 8]
    assert variants[0] == ["node0"] and variants[-1][:2] == ["node0", "node1"]


def test_float_nodes_are_recorded_in_the_recipe() -> None:
    candidate = with_float_nodes(_candidate("openvino-int8-static", 2.0), ["a/MatMul"])
    assert candidate.recipe.quantize.exclude_nodes == ["a/MatMul"]
    assert candidate.recipe.id == "openvino-int8-static"


def test_slow_candidates_are_skipped_once_a_fast_one_passed() -> None:
    passed = [_attempt("openvino-int8-weight", "passed", 0.4, 0.996)]
    reason = prune_reason(_candidate("onnx-fp32", 1.0), passed, "latency")
    assert "cannot beat" in reason
    assert prune_reason(_candidate("onnx-int8-dynamic", 1.9), passed, "latency") == ""
    assert prune_reason(_candidate("onnx-fp32", 1.0), [], "latency") == ""
    assert prune_reason(_candidate("onnx-fp32", 1.0), passed, "accuracy") == ""


def test_winner_is_the_fastest_that_passes_not_the_fastest() -> None:
    attempts = [
        _attempt("openvino-int8-static", "failed", 0.25, 0.984),
        _attempt("openvino-int8-static", "passed", 0.31, 0.991),
        _attempt("openvino-fp32", "passed", 0.6, 1.0),
    ]
    assert choose(attempts, "latency") is attempts[1]
    assert choose(attempts, "accuracy") is attempts[2]


def test_tradeoff_picture_marks_the_chosen_point(tmp_path: Path) -> None:
    attempts = [
        _attempt("openvino-int8-static", "failed", 0.25, 0.984),
        _attempt("openvino-fp32", "passed", 0.6, 1.0),
    ]
    svg = render_tradeoff_svg(
        attempts, attempts[1], "embedding_cosine_min", 0.99, baseline="ONNX Runtime fp32"
    )
    assert svg is not None and svg.startswith("<svg")
    assert "openvino-fp32 (chosen)" in svg and "tolerance 0.99" in svg
    assert "latency relative to ONNX Runtime fp32" in svg  # the baseline it was given
    assert (
        render_tradeoff_svg(
            attempts[:1], None, "embedding_cosine_min", 0.99, baseline="ONNX Runtime fp32"
        )
        is None
    )


class _RankingBackend:
    def rank_sensitive_nodes(
        self, artifact: object, probe: object, threads: int
    ) -> list[tuple[str, float]]:
        return [(f"node{i}", 0.9) for i in range(16)]


def test_refine_stops_on_host_slowness_only_when_host_timings_stand_for_the_device() -> None:
    """On a host without the device's int8 instructions, a variant measured no faster than
    fp32 here says nothing about the device: the search goes on until one passes."""
    from edgeport.backends import Artifact
    from edgeport.search import refine

    candidate = _candidate("openvino-int8-static", 3.0)
    artifact = Artifact(Path(), "m.xml", ("m.xml",), ("input_ids",), ("out",))

    def run(host_timings_rank: bool) -> list[str]:
        def evaluate(variant_candidate: Candidate, variant: str) -> Attempt:
            kept = len(variant_candidate.recipe.quantize.exclude_nodes)
            attempt = _attempt(
                "openvino-int8-static",
                "passed" if kept >= 8 else "failed",
                ratio=1.05,
                cosine=0.995 if kept >= 8 else 0.98,
            )
            return attempt.model_copy(update={"variant": variant, "latency_ratio": 1.05})

        attempts = refine(
            candidate,
            artifact,
            _RankingBackend(),
            lambda s: 0.0,
            1,
            evaluate,
            lambda message: None,
            host_timings_rank,
        )
        return [a.variant for a in attempts]

    assert run(True) == ["1 node in float"]
    assert run(False)[-1] == "8 nodes in float"
