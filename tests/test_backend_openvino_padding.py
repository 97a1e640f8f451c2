"""Padding removal: the unpadded OpenVINO graph computes the same thing at every real token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from conftest import TRAINING_TEXT

from edgeport.backends import Feeds
from edgeport.backends import openvino as openvino_backend
from edgeport.backends.openvino import OpenVinoBackend
from edgeport.backends.openvino_padding import remove_padding
from edgeport.backends.padding import PaddingKept
from edgeport.catalog import load_catalog
from edgeport.hub import resolve
from edgeport.model_info import inspect_model
from edgeport.schemas import Candidate, ModelInfo
from edgeport.text_inputs import TextEncoder, padded_batch

pytestmark = pytest.mark.openvino

# Lengths 1 to ~20 tokens in one batch: most positions are padding.
TEXTS = ["ok", "short text", *TRAINING_TEXT[:4], "a somewhat longer sentence about tokens " * 3]


class Exported:
    def __init__(self, folder: Path, workdir: Path) -> None:
        import openvino as ov

        self.info: ModelInfo = inspect_model(resolve(str(folder)))
        self.backend = OpenVinoBackend()
        self.exported = self.backend.export(self.info, workdir, trust_remote_code=False)
        self.model = ov.Core().read_model(str(self.exported.directory / self.exported.model_file))
        encoder = TextEncoder(folder, self.info.max_length, self.exported.input_names)
        self.batch: Feeds = encoder.encode(TEXTS)
        self.single: Feeds = encoder.encode([TEXTS[2]])
        self.calibration = [encoder.encode([text]) for text in TRAINING_TEXT]
        self.workdir = workdir


def _run(model: Any, feeds: Feeds) -> dict[str, np.ndarray]:
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    names = [port.get_any_name() for port in compiled.inputs]
    results = compiled({name: feeds[name] for name in names})
    return {port.get_any_name(): np.asarray(results[port]) for port in compiled.outputs}


@pytest.fixture(scope="module")
def bert(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return Exported(tiny_bert, tmp_path_factory.mktemp("ov-padding"))


def test_hidden_states_are_unchanged_at_real_tokens_and_zero_at_padding(bert: Exported) -> None:
    mask = bert.batch["attention_mask"].astype(bool)
    assert (~mask).sum() > mask.sum() / 2  # the batch is mostly padding
    expected = _run(bert.model, bert.batch)["last_hidden_state"]
    actual = _run(remove_padding(bert.model), bert.batch)["last_hidden_state"]
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual[mask], expected[mask], rtol=1e-5, atol=1e-5)
    assert not actual[~mask].any()


def test_a_batch_without_padding_is_unchanged(bert: Exported) -> None:
    expected = _run(bert.model, bert.single)["last_hidden_state"]
    actual = _run(remove_padding(bert.model), bert.single)["last_hidden_state"]
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_the_original_graph_is_left_alone(bert: Exported) -> None:
    before = len(bert.model.get_ops())
    remove_padding(bert.model)
    assert len(bert.model.get_ops()) == before


def test_a_classifier_reading_the_first_token_gets_the_same_logits(
    tiny_bert_classifier: Path, tmp_path: Path
) -> None:
    classifier = Exported(tiny_bert_classifier, tmp_path)
    expected = _run(classifier.model, classifier.batch)
    actual = _run(remove_padding(classifier.model), classifier.batch)
    assert set(actual) == set(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(actual[name], values, rtol=1e-4, atol=1e-5)


def test_a_graph_without_attention_is_refused_with_the_reason() -> None:
    import openvino as ov
    import openvino.opset13 as ops

    tokens = ops.parameter([-1, -1, 4], np.float32, name="hidden")
    mask = ops.parameter([-1, -1], np.int64, name="attention_mask")
    mask.output(0).set_names({"attention_mask"})
    weight = ops.constant(np.ones((4, 4), np.float32))
    model = ov.Model([ops.matmul(tokens, weight, False, False)], [tokens, mask])
    with pytest.raises(PaddingKept, match="no ScaledDotProductAttention"):
        remove_padding(model)


def _candidate(recipe_id: str) -> Candidate:
    catalog = load_catalog()
    recipe = catalog.recipe(recipe_id)
    return Candidate(
        recipe=recipe,
        target=catalog.targets[recipe.target],
        device="CPU" if recipe.target == "openvino" else "CPUExecutionProvider",
        estimated_memory_mb=1.0,
        estimated_size_mb=1.0,
        estimated_speedup=1.0,
        reason="test",
    )


def test_the_bundle_says_padding_was_removed(bert: Exported) -> None:
    artifact = bert.backend.build(
        bert.exported, _candidate("openvino-fp32"), bert.info, bert.calibration, bert.workdir / "a"
    )
    assert any(note.startswith("padding removed") for note in artifact.notes), artifact.notes
    session = bert.backend.load(artifact, "CPU", 1)
    mask = bert.batch["attention_mask"].astype(bool)
    expected = _run(bert.model, bert.batch)["last_hidden_state"]
    actual = session.run(bert.batch)["last_hidden_state"]
    np.testing.assert_allclose(actual[mask], expected[mask], rtol=1e-5, atol=1e-5)


def test_a_rewrite_that_changes_the_outputs_is_not_shipped(
    bert: Exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openvino.opset13 as ops

    def off_by_one_percent(model: Any) -> Any:
        unpadded = remove_padding(model)
        result = unpadded.get_results()[0]
        scaled = ops.multiply(result.input_value(0), ops.constant(np.float32(1.01)))
        result.input(0).replace_source_output(scaled.output(0))
        return unpadded

    monkeypatch.setattr(openvino_backend, "remove_padding", off_by_one_percent)
    artifact = bert.backend.build(
        bert.exported, _candidate("openvino-fp32"), bert.info, bert.calibration, bert.workdir / "b"
    )
    assert any("padding kept: the unpadded graph differs" in n for n in artifact.notes)
    session = bert.backend.load(artifact, "CPU", 1)
    expected = _run(bert.model, bert.batch)["last_hidden_state"]
    np.testing.assert_allclose(
        session.run(bert.batch)["last_hidden_state"], expected, rtol=1e-5, atol=1e-5
    )


def test_padded_batch_right_pads_calibration_texts(bert: Exported) -> None:
    batch = padded_batch(bert.calibration, size=3)
    assert batch is not None
    lengths = [int(feeds["attention_mask"].sum()) for feeds in bert.calibration[:3]]
    assert batch["attention_mask"].sum(axis=1).tolist() == lengths
    assert batch["input_ids"].shape == (3, max(lengths))
    assert padded_batch([]) is None


def _export_random_encoder(model_type: str, folder: Path) -> Any:
    """A random 2-layer encoder of `model_type` exported by optimum-intel, as an ov.Model."""
    import warnings

    import openvino as ov
    import torch
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig
    from transformers import AutoConfig, AutoModel

    sizes: dict[str, Any] = (
        {"dim": 32, "n_heads": 4, "hidden_dim": 64, "n_layers": 2}
        if model_type == "distilbert"
        else {
            "hidden_size": 32,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
        }
    )
    config = AutoConfig.for_model(model_type, vocab_size=300, max_position_embeddings=64, **sizes)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings
        main_export(
            model_name_or_path=str(folder),
            output=folder / "ov",
            task="feature-extraction",
            library_name="transformers",
            ov_config=OVConfig(dtype="fp32"),
            convert_tokenizer=False,
        )
    return ov.Core().read_model(str(folder / "ov" / "openvino_model.xml"))


def _random_padded_batch(model: Any) -> Feeds:
    lengths = np.array([3, 11, 17, 5])
    width = int(lengths.max())
    ids = np.random.default_rng(0).integers(5, 290, (len(lengths), width))
    feeds: Feeds = {
        "input_ids": ids.astype(np.int64),
        "attention_mask": (np.arange(width)[None] < lengths[:, None]).astype(np.int64),
    }
    names = {port.get_any_name() for port in model.inputs}
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    return feeds


@pytest.mark.parametrize("model_type", ["roberta", "distilbert"])
def test_other_encoder_families_are_unchanged_at_real_tokens(
    model_type: str, tmp_path: Path
) -> None:
    model = _export_random_encoder(model_type, tmp_path)
    feeds = _random_padded_batch(model)
    mask = feeds["attention_mask"].astype(bool)
    expected = _run(model, feeds)["last_hidden_state"]
    actual = _run(remove_padding(model), feeds)["last_hidden_state"]
    np.testing.assert_allclose(actual[mask], expected[mask], rtol=1e-5, atol=1e-5)


def test_an_encoder_exported_without_sdpa_keeps_its_padding(tmp_path: Path) -> None:
    model = _export_random_encoder("electra", tmp_path)  # optimum-intel traces eager attention
    with pytest.raises(PaddingKept, match="no ScaledDotProductAttention"):
        remove_padding(model)


def _one_layer_encoder(seq_len: int, positional: bool) -> Any:
    """input -> Q/K/V -> heads -> SDPA -> merge -> O proj [-> + a [1, S, H] constant]."""
    import openvino as ov
    import openvino.opset13 as ops

    hidden, heads = 8, 2
    rng = np.random.default_rng(1)
    x = ops.parameter([-1, seq_len, hidden], np.float32, name="hidden_states")
    mask = ops.parameter([-1, seq_len], np.int64, name="attention_mask")
    mask.output(0).set_names({"attention_mask"})

    def weight(*shape: int) -> Any:
        return ops.constant(rng.standard_normal(shape).astype(np.float32))

    def split_heads(value: Any) -> Any:
        shaped = ops.reshape(value, ops.constant(np.array([0, 0, heads, hidden // heads])), True)
        return ops.transpose(shaped, ops.constant(np.array([0, 2, 1, 3])))

    projections = [ops.add(ops.matmul(x, weight(hidden, hidden), False, False), weight(hidden))]
    projections += [ops.matmul(x, weight(hidden, hidden), False, False) for _ in range(2)]
    keep = ops.unsqueeze(ops.not_equal(mask, ops.constant(np.int64(0))), ops.constant([1, 2]))
    attention = ops.scaled_dot_product_attention(
        *[split_heads(p) for p in projections], keep, causal=False
    )
    merged = ops.reshape(
        ops.transpose(attention, ops.constant(np.array([0, 2, 1, 3]))),
        ops.constant(np.array([0, 0, hidden])),
        True,
    )
    out = ops.matmul(merged, weight(hidden, hidden), False, False)
    if positional:  # differs per position: cannot run on packed tokens
        out = ops.add(out, weight(1, seq_len, hidden))
    out = ops.gelu(out, "erf")
    return ov.Model([out], [x, mask])


@pytest.mark.parametrize("positional", [False, True])
def test_a_per_position_constant_reads_the_unpacked_tensor(positional: bool) -> None:
    model = _one_layer_encoder(seq_len=6, positional=positional)
    feeds: Feeds = {
        "hidden_states": np.random.default_rng(2).standard_normal((3, 6, 8)).astype(np.float32),
        "attention_mask": (np.arange(6)[None] < np.array([[2], [6], [4]])).astype(np.int64),
    }
    mask = feeds["attention_mask"].astype(bool)
    expected = next(iter(_run(model, feeds).values()))
    actual = next(iter(_run(remove_padding(model), feeds).values()))
    np.testing.assert_allclose(actual[mask], expected[mask], rtol=1e-5, atol=1e-5)
