"""The candidate search as a user sees it, on a fake runtime (tests/fake_backend.py).

The real CandidateEvaluator and search loop run with a backend whose recipes are scripted
(raises, misses the gate, passes slowly, passes fast): what is built, what is skipped and
why, what ships and with which verdict. No model, no runtime: milliseconds a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_backend import (
    BASELINE_MS,
    TARGET,
    FakeBackend,
    FakeFamily,
    RecordingProgress,
    Scripted,
    measure_in_process,
)

from edgeport.backends import Artifact, get_backend
from edgeport.errors import UnsupportedError
from edgeport.evaluation import (
    CandidateEvaluator,
    Measure,
    SearchOutcome,
    part_fallbacks,
    search_candidates,
)
from edgeport.families import BenchWorkload
from edgeport.schemas import Candidate, ModelInfo, Recipe
from edgeport.selection import SpeedBasis
from edgeport.validate import Evaluation

MODEL = ModelInfo(
    source="fake/model",
    local_path=Path("/nonexistent"),
    task="feature-extraction",
    family="encoder",
    model_type="bert",
    parameter_count=1000,
    weight_dtype="F32",
    weight_bytes=4000,
    files=[],
)
SCHEMES = {"fp32": "none", "int8": "int8-dynamic", "int4": "int4-weight"}


class TickingClock:
    """Each reading is `step` seconds after the last: the search always looks slow."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _candidate(recipe_id: str, speedup: float, precision: str = "int8") -> Candidate:
    recipe = Recipe.model_validate(
        {
            "id": recipe_id,
            "description": f"scripted {recipe_id}",
            "target": TARGET.id,
            "safety": 1,
            "quantize": {"scheme": SCHEMES[precision]},
            "tolerance": {"embedding_cosine_min": 0.99},
            "expect": {"size_factor": 1.0, "speedup": speedup},
        }
    )
    return Candidate(
        recipe=recipe,
        target=TARGET,
        device="CPU",
        estimated_memory_mb=10.0,
        estimated_size_mb=1.0,
        estimated_speedup=speedup,
        reason="scripted",
    )


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> dict[str, Scripted]:
    scripted: dict[str, Scripted] = {}
    monkeypatch.setattr(FakeBackend, "script", scripted)
    return scripted


def _search(
    tmp_path: Path,
    candidates: list[Candidate],
    *,
    budget_s: float = 1e9,
    accept_degraded: bool = False,
    clock: TickingClock | None = None,
    measure: Measure = measure_in_process,
) -> tuple[SearchOutcome, RecordingProgress]:
    progress = RecordingProgress()
    evaluator = CandidateEvaluator(
        MODEL,
        Evaluation([], [], ("accuracy",), 0, 1),
        [],
        BenchWorkload({}),
        1,
        tmp_path,
        False,
        progress,
        family=FakeFamily(),  # type: ignore[arg-type]  # the one method the evaluator calls
        baseline=TARGET,
        measure=measure,
    )
    outcome = search_candidates(
        candidates,
        evaluator,
        progress,
        objective="latency",
        basis=SpeedBasis(),
        budget_s=budget_s,
        accept_degraded=accept_degraded,
        clock=clock or TickingClock(0.0),
    )
    return outcome, progress


def _statuses(outcome: SearchOutcome) -> dict[str, str]:
    return {a.recipe_id: a.status for a in outcome.attempts}


def test_the_target_names_the_fake_backend_like_any_other() -> None:
    assert isinstance(get_backend(TARGET), FakeBackend)


def test_the_fastest_passing_candidate_ships_and_its_ratio_is_to_the_baseline(
    tmp_path: Path, script: dict[str, Scripted]
) -> None:
    script["slow"] = Scripted(accuracy=0.999, latency_ms=8.0)
    script["fast"] = Scripted(accuracy=0.995, latency_ms=4.0)
    outcome, progress = _search(tmp_path, [_candidate("slow", 1.2), _candidate("fast", 1.25)])
    assert _statuses(outcome) == {"slow": "passed", "fast": "passed"}
    assert outcome.verdict == "passed"
    assert outcome.chosen is not None and outcome.chosen.recipe_id == "fast"
    assert outcome.chosen.latency_ratio == 4.0 / BASELINE_MS  # confirmed in pairs
    assert "Measuring the Fake Runtime fp32 baseline" in progress.lines


def test_the_budget_skips_the_rest_once_one_passed_and_never_before(
    tmp_path: Path, script: dict[str, Scripted]
) -> None:
    script["misses-gate"] = Scripted(accuracy=0.9, latency_ms=2.0)
    script["passes"] = Scripted(accuracy=0.999, latency_ms=5.0)
    script["never-built"] = Scripted(accuracy=1.0, latency_ms=1.0)
    candidates = [
        _candidate("misses-gate", 5.0),
        _candidate("passes", 2.0),
        _candidate("never-built", 10.0),
    ]
    # Every clock reading is 100 s later: the 5 s budget is spent from the first candidate.
    outcome, _ = _search(tmp_path, candidates, budget_s=5.0, clock=TickingClock(100.0))
    assert _statuses(outcome) == {
        "misses-gate": "failed",  # over budget already, but nothing had passed yet
        "passes": "passed",
        "never-built": "skipped",
    }
    assert outcome.attempts[-1].detail == "search budget of 5s spent"
    assert outcome.chosen is not None and outcome.chosen.recipe_id == "passes"
    assert not (tmp_path / "candidates" / "never-built|").exists()


def test_a_candidate_that_cannot_beat_a_passing_one_is_skipped_with_the_reason(
    tmp_path: Path, script: dict[str, Scripted]
) -> None:
    script["fast"] = Scripted(accuracy=0.999, latency_ms=2.5)  # 0.25x the baseline
    script["plain"] = Scripted(accuracy=1.0, latency_ms=10.0)
    outcome, progress = _search(tmp_path, [_candidate("fast", 4.0), _candidate("plain", 1.0)])
    skipped = outcome.attempts[1]
    assert (skipped.recipe_id, skipped.status) == ("plain", "skipped")
    assert skipped.detail == (
        "estimated at ~1.00x fp32 latency, cannot beat a passing candidate measured at 0.25x"
    )
    assert f"plain: skipped, {skipped.detail}" in progress.lines


def test_a_crashing_candidate_is_an_error_and_the_others_still_run(
    tmp_path: Path, script: dict[str, Scripted]
) -> None:
    script["crashes"] = Scripted(raises=RuntimeError("kernel exploded"))
    script["slow"] = Scripted(accuracy=0.999, latency_ms=9.0)
    script["fast"] = Scripted(accuracy=0.995, latency_ms=6.0)
    candidates = [_candidate("crashes", 3.0), _candidate("slow", 1.1), _candidate("fast", 1.2)]
    outcome, progress = _search(tmp_path, candidates)
    crashed = outcome.attempts[0]
    assert (crashed.status, crashed.detail) == ("error", "RuntimeError: kernel exploded")
    assert _statuses(outcome) == {"crashes": "error", "slow": "passed", "fast": "passed"}
    assert outcome.chosen is not None and outcome.chosen.recipe_id == "fast"
    assert "crashes: error (RuntimeError: kernel exploded)" in progress.lines


def test_all_failed_ships_nothing_unless_degradation_is_accepted(
    tmp_path: Path, script: dict[str, Scripted]
) -> None:
    script["worse"] = Scripted(accuracy=0.90, latency_ms=2.0)
    script["better"] = Scripted(accuracy=0.98, latency_ms=5.0)
    candidates = [_candidate("worse", 5.0), _candidate("better", 2.0)]

    refused, _ = _search(tmp_path / "gate", candidates)
    assert _statuses(refused) == {"worse": "failed", "better": "failed"}
    assert (refused.verdict, refused.chosen) == ("failed", None)

    accepted, _ = _search(tmp_path / "degraded", candidates, accept_degraded=True)
    assert accepted.verdict == "degraded"
    # The most accurate of the failed ones, not the fastest.
    assert accepted.chosen is not None and accepted.chosen.recipe_id == "better"
    assert accepted.chosen.detail == "embedding_cosine_min 0.9800 < 0.99"
    # A failed candidate's speed decides nothing, so it is not timed; the one that ships
    # degraded is, like any shipped candidate.
    assert refused.attempts[0].measurement is None and refused.attempts[1].measurement is None
    assert accepted.chosen.measurement is not None
    assert accepted.chosen.latency_ratio == 5.0 / BASELINE_MS
    assert accepted.attempts[1] is accepted.chosen


def test_only_contenders_are_confirmed_and_rounds_stop_once_the_lead_is_clear(
    tmp_path: Path, script: dict[str, Scripted]
) -> None:
    timed: list[str] = []

    def counting(artifact: Artifact, *args: object) -> object:
        timed.append(artifact.directory.name)
        return measure_in_process(artifact, *args)  # type: ignore[arg-type]

    script["fastest"] = Scripted(accuracy=0.999, latency_ms=4.0)
    script["close"] = Scripted(accuracy=0.999, latency_ms=4.4)  # within 15 %: a contender
    script["far"] = Scripted(accuracy=0.999, latency_ms=8.0)  # twice as slow: no chance
    candidates = [_candidate("far", 1.3), _candidate("close", 1.2), _candidate("fastest", 2.0)]
    outcome, _ = _search(tmp_path, candidates, measure=counting)  # type: ignore[arg-type]
    assert outcome.chosen is not None and outcome.chosen.recipe_id == "fastest"
    # Noise-free timings: one paired round settles it, and "far" is never re-measured.
    assert {name: timed.count(name) for name in set(timed) - {"fake"}} == {
        "far|": 1,
        "close|": 2,
        "fastest|": 2,
    }


def test_every_candidate_erroring_is_unsupported_naming_each_error(
    tmp_path: Path, script: dict[str, Scripted]
) -> None:
    script["no-kernel"] = Scripted(raises=RuntimeError("no int8 kernel"))
    script["no-module"] = Scripted(raises=ModuleNotFoundError("no onnx_ir", name="onnx_ir"))
    candidates = [_candidate("no-kernel", 2.0), _candidate("no-module", 3.0, "int4")]
    with pytest.raises(UnsupportedError) as caught:
        _search(tmp_path, candidates, accept_degraded=True)
    message = str(caught.value)
    assert message.startswith("every candidate failed to convert: ")
    assert "no-kernel: RuntimeError: no int8 kernel" in message
    assert "no-module: needs `pip install -c constraints.txt onnx-ir`" in message
    assert caught.value.exit_code == 4


def _part(name: str, precision: str, size: int, tmp_path: Path) -> Artifact:
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{name}.onnx").write_bytes(b"\0" * size)
    return Artifact(
        folder, f"{name}.onnx", (f"{name}.onnx",), (), (), part=name, precision=precision
    )


def test_a_multi_part_model_falls_back_one_part_at_a_time_smallest_first(
    tmp_path: Path,
) -> None:
    """When a quantised encoder-decoder misses the gate, the search first keeps the
    smaller part in float (the combination that stays the most compressed), then the
    other; keeping both is the fp32 candidate, never a variant, and a model with one
    quantised part has no part-by-part fallback at all."""
    encoder = _part("encoder", "int8", 3000, tmp_path)
    decoder = _part("decoder", "int8", 1000, tmp_path)
    both = Artifact(tmp_path, "", (), (), (), parts=(encoder, decoder))
    assert part_fallbacks(both) == [["decoder"], ["encoder"]]
    float_decoder = _part("float-decoder", "fp32", 1000, tmp_path)
    one = Artifact(tmp_path, "", (), (), (), parts=(encoder, float_decoder))
    assert part_fallbacks(one) == []
    assert part_fallbacks(encoder) == []


def test_the_progress_line_counts_candidates_and_estimates_what_remains() -> None:
    from edgeport.progress import SearchClock

    now = [100.0]
    clock = SearchClock(lambda: now[0])
    clock.candidate(1, 4, "openvino-int8-static")
    clock.step = "building"
    now[0] = 130.0
    assert clock.line() == (
        "candidate 1/4: openvino-int8-static | building | 0:30 elapsed | time left not known yet"
    )
    clock.candidate(2, 4, "onnx-int8-dynamic")  # the first took 30 s
    now[0] = 140.0
    # 20 s left of this one at the mean pace, then two more of 30 s each.
    assert clock.line() == "candidate 2/4: onnx-int8-dynamic | 0:40 elapsed | ~1:20 left"


def test_without_a_terminal_each_candidate_is_one_plain_line() -> None:
    import io

    from rich.console import Console

    from edgeport.progress import ConsoleProgress

    stream = io.StringIO()
    with ConsoleProgress(Console(file=stream, force_terminal=False, width=200)) as progress:
        progress.stage("[1/2] onnx-fp32: baseline")
        progress.candidate(1, 2, "onnx-fp32")
        progress.info("onnx-fp32: validating against PyTorch")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "==> [1/2] onnx-fp32: baseline"
    assert lines[1].startswith("    candidate 1/2: onnx-fp32 | 0:00 elapsed")
    assert lines[2] == "    onnx-fp32: validating against PyTorch"
