"""The pipeline's own decisions: what a failed candidate tells the user, and why nothing
could be converted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_planner import ALL_TARGETS, CATALOG, MINILM_INFO

from edgeport import evaluation, pipeline
from edgeport.backends import ExportedModel
from edgeport.errors import DoesNotFitError, UnsupportedError
from edgeport.families import BenchWorkload
from edgeport.planner import plan
from edgeport.progress import SilentProgress
from edgeport.validate import Evaluation


class _BackendMissingAModule:
    target_id = "onnxruntime"

    def build(self, *args: Any, **kwargs: Any) -> Any:
        raise ModuleNotFoundError("No module named 'onnx_ir'", name="onnx_ir")


def test_candidate_missing_a_module_says_which_package_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(evaluation, "get_backend", lambda target: _BackendMissingAModule())
    the_plan = plan(
        MINILM_INFO,
        CATALOG.profile("raspberry-pi-5"),
        CATALOG.recipes.values(),
        CATALOG.targets,
        ALL_TARGETS,
    )
    exported = ExportedModel("onnxruntime", tmp_path, "model.onnx", ("input_ids",), ("out",))
    evaluator = evaluation.CandidateEvaluator(
        MINILM_INFO,
        Evaluation([], [], ("out",), 0, 0),
        [],
        BenchWorkload({"input_ids": np.zeros((1, 4), dtype=np.int64)}),
        1,
        tmp_path,
        False,
        SilentProgress(),
        exports={"onnxruntime": exported},
        baseline=CATALOG.target(CATALOG.baseline.target),
    )
    attempt = evaluator.evaluate(the_plan.candidates[0], None)
    assert attempt.status == "error"
    assert attempt.detail.startswith("needs `pip install -c constraints.txt onnx-ir`")


def test_empty_plan_from_memory_alone_is_does_not_fit() -> None:
    profile = CATALOG.profile("raspberry-pi-5").model_copy(update={"memory_mb": 8})
    the_plan = plan(MINILM_INFO, profile, CATALOG.recipes.values(), CATALOG.targets, ALL_TARGETS)
    assert not the_plan.candidates
    # OpenVINO recipes are dropped because the board does not run OpenVINO, not for memory.
    assert {d.code for d in the_plan.dropped} > {"memory"}
    error = pipeline.explain_empty_plan(the_plan)
    assert isinstance(error, DoesNotFitError) and error.exit_code == 5
    assert "can give a model ~" in str(error) and "of 8 MB" in str(error)


def test_empty_plan_without_memory_drops_is_unsupported() -> None:
    the_plan = plan(
        MINILM_INFO.model_copy(update={"family": "audio"}),
        CATALOG.profile("raspberry-pi-5"),
        CATALOG.recipes.values(),
        CATALOG.targets,
        ALL_TARGETS,
    )
    error = pipeline.explain_empty_plan(the_plan)
    assert isinstance(error, UnsupportedError) and error.exit_code == 4
