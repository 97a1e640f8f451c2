"""A runtime that runs nothing: the search's decisions, testable in milliseconds.

`FakeBackend` satisfies edgeport.backends.Backend (export, build, load, host_devices) and
is named by a target like any other (`backend: "fake_backend:FakeBackend"`; tests/ is
on sys.path under pytest). What each recipe does is scripted in `FakeBackend.script`
(recipe id -> `Scripted`): build raises, or writes an artifact whose file holds the
accuracy and latency its session reports. `FakeFamily.validate` gates that accuracy on
the recipe's `embedding_cosine_min`, and `measure_in_process` reads the latency, so the
real CandidateEvaluator and search loop run end to end with no torch, onnx or child
process.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeport.backends import Artifact, ExportedModel, Feeds, PartSource
from edgeport.families import BenchWorkload
from edgeport.schemas import (
    Candidate,
    Measurement,
    MetricResult,
    ModelInfo,
    Target,
    Tolerance,
    ValidationReport,
)
from edgeport.validate import Evaluation

MODEL_FILE = "model.fake"
METRIC = "embedding_cosine_min"
# The plain export's latency: what every scripted latency is a ratio of.
BASELINE_MS = 10.0

TARGET = Target.model_validate(
    {
        "id": "fake",
        "name": "Fake Runtime",
        "formats": ["fake"],
        "host_modules": [],
        "device_packages": ["numpy"],
        "devices": ["CPU"],
        "precisions": ["fp32", "int8", "int4"],
        "families": ["encoder"],
        "runtime_overhead_mb": 10,
        "backend": "fake_backend:FakeBackend",
        "schemes": ["none", "int8-dynamic", "int8-static", "int4-weight"],
        "runner": "fake",
    }
)


@dataclass(frozen=True)
class Scripted:
    """What building, validating and timing one recipe gives."""

    accuracy: float = 1.0
    latency_ms: float = BASELINE_MS
    raises: BaseException | None = None  # raised by build


def _write(directory: Path, accuracy: float, latency_ms: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"accuracy": accuracy, "latency_ms": latency_ms}
    (directory / MODEL_FILE).write_text(json.dumps(payload), encoding="utf-8")


class FakeSession:
    input_names = ("x",)
    output_names = ("accuracy",)

    def __init__(self, artifact: Artifact) -> None:
        payload = json.loads(artifact.model_path.read_text(encoding="utf-8"))
        self.accuracy = float(payload["accuracy"])
        self.latency_ms = float(payload["latency_ms"])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"accuracy": np.array([self.accuracy])}


class FakeBackend:
    target_id = "fake"
    # recipe id -> what it does; tests replace it (monkeypatch) for their scenario.
    script: ClassVar[dict[str, Scripted]] = {}

    def export(
        self,
        model: ModelInfo,
        workdir: Path,
        *,
        trust_remote_code: bool,
        parts: Sequence[PartSource] = (),
    ) -> ExportedModel:
        _write(workdir, 1.0, BASELINE_MS)
        return ExportedModel(self.target_id, workdir, MODEL_FILE, ("x",), ("accuracy",))

    def build(
        self,
        exported: ExportedModel,
        candidate: Candidate,
        model: ModelInfo,
        calibration: Sequence[Feeds],
        workdir: Path,
    ) -> Artifact:
        scripted = self.script[candidate.recipe.id]
        if scripted.raises is not None:
            raise scripted.raises
        _write(workdir, scripted.accuracy, scripted.latency_ms)
        return Artifact(workdir, MODEL_FILE, (MODEL_FILE,), ("x",), ("accuracy",))

    def load(self, artifact: Artifact, device: str, threads: int) -> FakeSession:
        return FakeSession(artifact)

    @staticmethod
    def host_devices() -> list[str]:
        return ["CPU"]


class FakeFamily:
    """The one Family method the evaluator calls: gate the session's accuracy."""

    id = "fake"

    def validate(
        self, model: ModelInfo, session: Any, evaluation: Evaluation, tolerance: Tolerance
    ) -> ValidationReport:
        value = float(session.run({})["accuracy"][0])
        threshold = tolerance.embedding_cosine_min
        passed = threshold is None or value >= threshold
        return ValidationReport(
            task=model.task,
            validation_samples=1,
            calibration_samples=0,
            outputs=[],
            metrics=[
                MetricResult(
                    name=METRIC,
                    value=value,
                    threshold=threshold,
                    higher_is_better=True,
                    passed=passed,
                )
            ],
            failures=[] if passed else [f"{METRIC} {value:.4f} < {threshold}"],
        )


def measure_in_process(
    artifact: Artifact, target: Target, device: str, threads: int, bench: BenchWorkload
) -> Measurement:
    """The session's scripted latency, as bench.measure would report it."""
    session = FakeSession(artifact)
    return Measurement(
        latency_ms=session.latency_ms,
        latency_p90_ms=session.latency_ms,
        runs=1,
        batch_size=1,
        threads=threads,
        peak_memory_mb=1.0,
        model_bytes=artifact.model_bytes,
    )


class RecordingProgress:
    """A Progress that keeps every line it was told, for tests to read."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def stage(self, message: str) -> None:
        self.lines.append(message)

    def info(self, message: str) -> None:
        self.lines.append(message)

    def candidate(self, index: int, total: int, name: str) -> None:
        self.lines.append(f"candidate {index}/{total} {name}")
