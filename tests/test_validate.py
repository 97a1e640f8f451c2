from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeport.schemas import ModelInfo, Tolerance
from edgeport.validate import Evaluation, compare, cosine_rows, embedding_metrics, pool

INFO = ModelInfo(
    source="m",
    local_path=Path("/m"),
    task="feature-extraction",
    family="encoder",
    model_type="bert",
    parameter_count=1,
    weight_dtype="F32",
    weight_bytes=4,
    files=[],
    pooling="mean",
    normalize_embeddings=True,
)


def _evaluation(hidden: np.ndarray, mask: np.ndarray) -> Evaluation:
    return Evaluation(
        batches=[{"input_ids": np.zeros(mask.shape, np.int64), "attention_mask": mask}],
        reference=[{"last_hidden_state": hidden}],
        output_names=("last_hidden_state",),
        calibration_samples=0,
        validation_samples=int(mask.shape[0]),
    )


def test_mean_pooling_ignores_padding() -> None:
    hidden = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]])
    mask = np.array([[1, 1, 0]])
    assert np.allclose(pool(hidden, mask, "mean", normalize=False), [[2.0, 0.0]])


def test_worst_case_decides_not_the_mean() -> None:
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(10, 4, 8))
    mask = np.ones((10, 4), dtype=np.int64)
    damaged = hidden.copy()
    damaged[3] = rng.normal(size=(4, 8))  # one input broken, nine perfect
    report = compare(
        INFO,
        _evaluation(hidden, mask),
        [{"last_hidden_state": damaged}],
        Tolerance(embedding_cosine_min=0.99),
        embedding_metrics,
    )
    assert not report.passed
    assert report.metric("embedding_cosine_mean") > 0.85  # the average would have looked fine
    assert report.metric("embedding_cosine_min") < 0.9
    assert "embedding_cosine_min" in report.failures[0]


def test_nan_outputs_fail() -> None:
    hidden = np.ones((2, 3, 4))
    mask = np.ones((2, 3), dtype=np.int64)
    broken = hidden.copy()
    broken[0, 0, 0] = np.nan
    report = compare(
        INFO,
        _evaluation(hidden, mask),
        [{"last_hidden_state": broken}],
        Tolerance(),
        embedding_metrics,
    )
    assert any("NaN" in failure for failure in report.failures)


def test_shape_and_missing_outputs_are_all_reported() -> None:
    hidden = np.ones((2, 3, 4))
    mask = np.ones((2, 3), dtype=np.int64)
    report = compare(
        INFO,
        _evaluation(hidden, mask),
        [{"last_hidden_state": np.ones((2, 3, 5))}],
        Tolerance(),
        embedding_metrics,
    )
    assert any("shape" in failure for failure in report.failures)
    report = compare(
        INFO, _evaluation(hidden, mask), [{"other": hidden}], Tolerance(), embedding_metrics
    )
    assert any("missing" in failure for failure in report.failures)


def test_missing_threshold_falls_back_to_a_default_gate() -> None:
    hidden = np.ones((1, 2, 4))
    mask = np.ones((1, 2), dtype=np.int64)
    report = compare(
        INFO,
        _evaluation(hidden, mask),
        [{"last_hidden_state": hidden}],
        Tolerance(),
        embedding_metrics,
    )
    assert report.metrics[0].threshold == 0.99
    assert any("default" in note for note in report.notes)


def test_cosine_rows() -> None:
    assert np.allclose(cosine_rows(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]])), [0.0])
