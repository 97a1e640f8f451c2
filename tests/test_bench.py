"""bench.measure: a child per measurement, forked from a warm server, isolated as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeport.backends import Artifact
from edgeport.bench import measure
from edgeport.catalog import load_catalog
from edgeport.errors import EdgeportError


def _matmul_model(folder: Path, size: int = 256) -> Artifact:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", size])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    return Artifact(folder, "model.onnx", ("model.onnx",), ("x",), ("y",))


def test_measurements_report_latency_and_leave_stdout_alone(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    target = load_catalog().target("onnxruntime")
    artifact = _matmul_model(tmp_path / "model")
    feeds = {"x": np.ones((8, 256), dtype=np.float32)}
    first = measure(artifact, target, "cpu", 1, feeds, runs=5)
    second = measure(artifact, target, "cpu", 1, feeds, runs=5)
    for result in (first, second):
        assert result.latency_ms > 0
        assert result.latency_p90_ms >= result.latency_ms
        assert result.batch_size == 8
        assert result.peak_memory_mb >= 0
        assert result.model_bytes == artifact.model_bytes
    # The children write to their own log: stdout belongs to `--json`.
    assert capfd.readouterr().out == ""


def test_a_child_that_fails_is_one_line_and_the_next_one_still_runs(tmp_path: Path) -> None:
    target = load_catalog().target("onnxruntime")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    artifact = Artifact(broken, "model.onnx", ("model.onnx",), ("x",), ("y",))
    feeds = {"x": np.ones((1, 256), dtype=np.float32)}
    with pytest.raises(EdgeportError, match="latency measurement failed") as caught:
        measure(artifact, target, "cpu", 1, feeds, runs=2)
    assert "\n" not in str(caught.value)
    good = _matmul_model(tmp_path / "good")
    assert measure(good, target, "cpu", 1, feeds, runs=2).latency_ms > 0
