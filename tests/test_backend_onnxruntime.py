"""The ONNX Runtime backend on a tiny random BERT: every encoder recipe builds and agrees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TRAINING_TEXT

from edgeport.backends import Artifact, Feeds
from edgeport.backends.onnxruntime import OnnxRuntimeBackend
from edgeport.catalog import load_catalog
from edgeport.hub import resolve
from edgeport.model_info import inspect_model
from edgeport.schemas import Candidate, ModelInfo, Quantization, Recipe
from edgeport.text_inputs import TextEncoder, right_pad

# Worst pooled-embedding cosine vs the fp32 export, per recipe, on a random 32-wide BERT
# (random weights quantise worse than trained ones).
SCHEMES = {
    "onnx-fp32": 0.99999,
    "onnx-fp32-fused": 0.99999,
    "onnx-fp16": 0.999,
    "onnx-int8-dynamic": 0.95,
    "onnx-int8-dynamic-per-tensor": 0.9,
    "onnx-int8-static-qdq": 0.9,
    "onnx-int8-static-qoperator": 0.9,
}
TEXTS = [*TRAINING_TEXT, "short", "a somewhat longer sentence about small devices and tokens"]


class Setup:
    def __init__(self, tiny_bert: Path, workdir: Path) -> None:
        self.info: ModelInfo = inspect_model(resolve(str(tiny_bert)))
        self.backend = OnnxRuntimeBackend()
        self.exported = self.backend.export(self.info, workdir, trust_remote_code=False)
        self.workdir = workdir
        encoder = TextEncoder(tiny_bert, self.info.max_length, self.exported.input_names)
        # One text per input, as edgeport calibrates: the widths differ.
        self.calibration = [encoder.encode([text]) for text in TRAINING_TEXT * 2]
        self.batch: Feeds = encoder.encode(TEXTS)
        self.catalog = load_catalog()

    def build(self, recipe: Recipe, name: str) -> Artifact:
        candidate = Candidate(
            recipe=recipe,
            target=self.catalog.targets["onnxruntime"],
            device="CPUExecutionProvider",
            estimated_memory_mb=1.0,
            estimated_size_mb=1.0,
            estimated_speedup=1.0,
            reason="test",
        )
        return self.backend.build(
            self.exported, candidate, self.info, self.calibration, self.workdir / name
        )

    def embed(self, artifact: Artifact) -> np.ndarray:
        outputs = self.backend.load(artifact, "CPUExecutionProvider", 1).run(self.batch)
        hidden = outputs["last_hidden_state"].astype(np.float64)
        weights = self.batch["attention_mask"][..., None].astype(np.float64)
        pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
        return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def ort(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return Setup(tiny_bert, tmp_path_factory.mktemp("onnxruntime"))


@pytest.fixture(scope="module")
def reference(ort: Setup) -> np.ndarray:
    exported = ort.exported
    return ort.embed(
        Artifact(
            exported.directory,
            exported.model_file,
            (exported.model_file,),
            exported.input_names,
            exported.output_names,
        )
    )


@pytest.mark.parametrize("recipe_id", sorted(SCHEMES))
def test_each_recipe_builds_and_agrees(ort: Setup, reference: np.ndarray, recipe_id: str) -> None:
    artifact = ort.build(ort.catalog.recipe(recipe_id), recipe_id)
    cosine = (ort.embed(artifact) * reference).sum(axis=-1)
    assert cosine.min() >= SCHEMES[recipe_id], (recipe_id, cosine)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration_copes_with_texts_of_different_lengths(
    ort: Setup, reference: np.ndarray, method: str
) -> None:
    recipe = ort.catalog.recipe("onnx-int8-static-qdq")
    recipe = recipe.model_copy(
        update={"quantize": recipe.quantize.model_copy(update={"calibration_method": method})}
    )
    artifact = ort.build(recipe, f"qdq-{method}")
    cosine = (ort.embed(artifact) * reference).sum(axis=-1)
    assert cosine.min() >= 0.9, cosine


def test_right_pad_gives_every_text_the_widest_length(ort: Setup) -> None:
    padded = right_pad(ort.calibration[:3])
    width = max(feeds["input_ids"].shape[-1] for feeds in ort.calibration[:3])
    assert {feeds["input_ids"].shape for feeds in padded} == {(1, width)}
    for before, after in zip(ort.calibration[:3], padded, strict=True):
        assert after["attention_mask"].sum() == before["attention_mask"].sum()
        length = before["input_ids"].shape[-1]
        np.testing.assert_array_equal(after["input_ids"][:, :length], before["input_ids"])


# ------------------------------------------------------------------ padding removal


def _outputs(path: Path, feeds: Feeds) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return np.asarray(session.run(None, {k: v for k, v in feeds.items() if k in names})[0])


def test_fused_graph_without_padding_is_identical_at_real_tokens(ort: Setup) -> None:
    import onnx

    from edgeport.backends.onnxruntime_padding import remove_padding

    fused = ort.workdir / "fused-for-padding.onnx"
    assert ort.backend._fuse(ort.exported.directory / "model.onnx", fused, ort.info)
    unpadded = ort.workdir / "unpadded.onnx"
    onnx.save(remove_padding(onnx.load(str(fused))), str(unpadded))
    mask = ort.batch["attention_mask"].astype(bool)
    assert (~mask).any()
    expected, actual = _outputs(fused, ort.batch), _outputs(unpadded, ort.batch)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual[mask], expected[mask], rtol=1e-5, atol=1e-5)
    assert not actual[~mask].any()


def test_the_fused_fp32_bundle_says_padding_was_removed(ort: Setup) -> None:
    artifact = ort.build(ort.catalog.recipe("onnx-fp32-fused"), "fused-notes")
    assert any(note.startswith("padding removed") for note in artifact.notes), artifact.notes


def test_an_unfused_graph_keeps_its_padding_and_says_why(ort: Setup, reference: np.ndarray) -> None:
    recipe = ort.catalog.recipe("onnx-fp32")
    recipe = recipe.model_copy(
        update={"graph": recipe.graph.model_copy(update={"remove_padding": True})}
    )
    artifact = ort.build(recipe, "unfused-padding")
    assert any("padding kept: no fused Attention op" in note for note in artifact.notes)
    cosine = (ort.embed(artifact) * reference).sum(axis=-1)
    assert cosine.min() >= 0.99999


def _zero_outputs(path: Path) -> None:
    """Multiply every output of the model at `path` by 0, in place."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    zero = helper.make_tensor("edgeport_test_zero", onnx.TensorProto.FLOAT, [], [0.0])
    model.graph.initializer.append(zero)
    for output in model.graph.output:
        inner = f"{output.name}_before_zero"
        for node in model.graph.node:
            node.output[:] = [inner if name == output.name else name for name in node.output]
            node.input[:] = [inner if name == output.name else name for name in node.input]
        model.graph.node.append(helper.make_node("Mul", [inner, zero.name], [output.name]))
    onnx.save(model, str(path))


def test_the_int8_dynamic_bundle_is_checked_after_quantisation(ort: Setup) -> None:
    artifact = ort.build(ort.catalog.recipe("onnx-int8-dynamic"), "dynamic-notes")
    note = next(note for note in artifact.notes if note.startswith("padding"))
    assert note.startswith("padding removed"), artifact.notes
    assert "token cosine" in note  # judged as a quantised graph, against its quantised twin


def test_a_graph_broken_by_quantisation_ships_its_padded_twin(
    ort: Setup, reference: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The float rewrite passes its exact check; only the quantised graph is wrong."""
    quantize = OnnxRuntimeBackend._quantize_dynamic

    def broken_without_padding(
        self: OnnxRuntimeBackend, source: Path, target: Path, quantization: Quantization
    ) -> None:
        quantize(self, source, target, quantization)
        if source.name == "unpadded.onnx":
            _zero_outputs(target)

    monkeypatch.setattr(OnnxRuntimeBackend, "_quantize_dynamic", broken_without_padding)
    artifact = ort.build(ort.catalog.recipe("onnx-int8-dynamic"), "dynamic-broken")
    kept = [note for note in artifact.notes if note.startswith("padding kept")]
    assert kept and "differs by 1 (relative)" in kept[0], artifact.notes
    cosine = (ort.embed(artifact) * reference).sum(axis=-1)
    assert cosine.min() >= SCHEMES["onnx-int8-dynamic"]
