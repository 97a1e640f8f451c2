"""Mixed precision on ONNX Runtime: ranking the quantised nodes of a real QDQ model.

The tiny trained ViT in examples/vision, exported and quantised by the backend as the
`onnx-int8-static-vision` recipe does it; each node is scored with real onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeport.backends import Artifact, ExportedModel, Feeds
from edgeport.backends.onnxruntime import OnnxRuntimeBackend, OnnxSession
from edgeport.catalog import load_catalog
from edgeport.hub import resolve
from edgeport.model_info import inspect_model
from edgeport.schemas import Candidate, ModelInfo
from edgeport.search import with_float_nodes

TINY_VIT = Path(__file__).resolve().parents[1] / "examples" / "vision" / "tiny-vit"
RECIPE = "onnx-int8-static-vision"
RANKED = {"Conv", "MatMul", "Gemm"}


class Setup:
    def __init__(self, workdir: Path) -> None:
        self.info: ModelInfo = inspect_model(resolve(str(TINY_VIT)))
        self.backend = OnnxRuntimeBackend()
        self.exported: ExportedModel = self.backend.export(
            self.info, workdir, trust_remote_code=False
        )
        self.workdir = workdir
        rng = np.random.default_rng(0)
        size = json.loads((TINY_VIT / "config.json").read_text(encoding="utf-8"))["image_size"]
        shape = (1, 3, size, size)
        self.calibration: list[Feeds] = [
            {"pixel_values": rng.uniform(-1, 1, shape).astype(np.float32)} for _ in range(4)
        ]
        self.batch: Feeds = {"pixel_values": rng.uniform(-1, 1, (6, *shape[1:])).astype(np.float32)}
        self.catalog = load_catalog()
        self.candidate = Candidate(
            recipe=self.catalog.recipe(RECIPE),
            target=self.catalog.targets["onnxruntime"],
            device="CPUExecutionProvider",
            estimated_memory_mb=1.0,
            estimated_size_mb=1.0,
            estimated_speedup=1.0,
            reason="test",
        )
        self.reference = OnnxSession(self.exported.directory / self.exported.model_file, 1).run(
            self.batch
        )["logits"]
        self.quantised = self.build(self.candidate, "full")

    def build(self, candidate: Candidate, name: str) -> Artifact:
        return self.backend.build(
            self.exported, candidate, self.info, self.calibration, self.workdir / name
        )

    def probe(self, session: Any) -> float:
        """Worst logit cosine against the fp32 export, as the vision family scores."""
        logits = session.run(self.batch)["logits"].astype(np.float64)
        reference = self.reference.astype(np.float64)
        cosine = (logits * reference).sum(-1) / (
            np.linalg.norm(logits, axis=-1) * np.linalg.norm(reference, axis=-1)
        )
        return float(cosine.min())


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(tmp_path_factory.mktemp("ort-sensitivity"))


@pytest.fixture(scope="module")
def ranking(vit: Setup) -> list[tuple[str, float]]:
    return vit.backend.rank_sensitive_nodes(vit.quantised, vit.probe, threads=1)


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def _quantised_nodes(model: Any) -> set[str]:
    """Conv/MatMul/Gemm nodes that read a DequantizeLinear: those int8 kernels run."""
    dequantised = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {
        node.name
        for node in model.graph.node
        if node.op_type in RANKED and any(name in dequantised for name in node.input)
    }


def test_ranking_scores_every_quantised_node_most_harmful_first(
    vit: Setup, ranking: list[tuple[str, float]]
) -> None:
    names = [name for name, _ in ranking]
    quantised = _quantised_nodes(_load(vit.quantised.model_path))
    assert len(quantised) > 20  # patch Conv, 8 MatMuls per layer, classifier Gemm
    assert sorted(names) == sorted(quantised)
    scores = [score for _, score in ranking]
    assert scores == sorted(scores)  # most harmful first
    assert all(-1.0 <= score <= 1.0 + 1e-6 for score in scores)
    # One node quantised costs at most what the whole int8 model costs, give or take.
    full = vit.probe(vit.backend.load(vit.quantised, "CPUExecutionProvider", 1))
    assert scores[0] >= full - 1e-3
    # The names are the float graph's, which nodes_to_exclude takes.
    exported = {n.name for n in _load(vit.exported.directory / vit.exported.model_file).graph.node}
    assert set(names) <= exported


def test_bypassing_every_other_pair_leaves_a_valid_model(vit: Setup) -> None:
    import onnx

    from edgeport.backends.onnxruntime import OnnxSession
    from edgeport.backends.onnxruntime_sensitivity import analyse, keep_only

    graph = analyse(_load(vit.quantised.model_path))

    # No pair kept: a float graph (weights at their int8 values), logits still an output.
    none = keep_only(graph, None)
    onnx.checker.check_model(none)
    assert {n.op_type for n in none.graph.node} & {"QuantizeLinear", "DequantizeLinear"} == set()
    assert [o.name for o in none.graph.output] == ["logits"]
    assert vit.probe(OnnxSession(none.SerializeToString(), 1)) > 0.9999

    # The classifier alone: its input and weight pairs, and the pair on its output.
    gemm = next(n.name for n in graph.model.graph.node if n.op_type == "Gemm")
    alone = keep_only(graph, gemm)
    onnx.checker.check_model(alone)
    assert _quantised_nodes(alone) == {gemm}
    quantizers = [n for n in alone.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantizers) == 2  # its activation input and the logits it writes
    producers = {o: n for n in alone.graph.node for o in n.output}
    assert producers["logits"].op_type == "DequantizeLinear"
    session = OnnxSession(alone.SerializeToString(), 1)
    assert session.output_names == ("logits",)
    assert 0.9 < vit.probe(session) <= 1.0 + 1e-6

    # An attention MatMul between two activations keeps both of its input pairs only.
    attention = next(n for n in graph.model.graph.node if n.name.endswith("attention/MatMul_1"))
    kept = keep_only(graph, attention.name)
    assert _quantised_nodes(kept) == {attention.name}
    kept_producers = {o: n for n in kept.graph.node for o in n.output}
    node = next(n for n in kept.graph.node if n.name == attention.name)
    assert [kept_producers[name].op_type for name in node.input] == ["DequantizeLinear"] * 2
    OnnxSession(kept.SerializeToString(), 1).run(vit.batch)


def test_excluding_the_top_ranked_node_leaves_it_in_float(
    vit: Setup, ranking: list[tuple[str, float]]
) -> None:
    worst = ranking[0][0]
    artifact = vit.build(with_float_nodes(vit.candidate, [worst]), "mixed")
    model = _load(artifact.model_path)
    still_quantised = _quantised_nodes(model)
    assert worst not in still_quantised
    assert still_quantised == {name for name, _ in ranking} - {worst}
    producers = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == worst)
    assert all(
        producers[name].op_type != "DequantizeLinear" for name in node.input if name in producers
    )
    assert all(
        n.op_type != "QuantizeLinear" or n.input[0] not in node.output for n in model.graph.node
    )
