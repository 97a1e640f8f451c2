"""Padding removal: the unpadded OpenVINO graph computes the same thing at every real token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from conftest import MINILM, TRAINING_TEXT, needs_minilm, run_cli

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


# ------------------------------------------- quantised graphs, and the AVX2 host (issue 12)

# Element-wise ops the packing must not use on its integer index tensors: the CPU
# plugin's AVX2 Select reads an integer condition as a float, which flush-to-zero
# (CPU_DENORMALS_OPTIMIZATION) turns to 0 (docs/research/padding-removal-isa.md).
_INTEGER_ELTWISE = {"Select", "Subtract", "Add", "Multiply", "NotEqual", "Equal", "CumSum"}


@pytest.fixture(scope="module")
def quantised(bert: Exported) -> Path:
    """The tiny BERT quantised by the int8-static recipe's settings, padding kept, saved."""
    import openvino as ov

    recipe = load_catalog().recipe("openvino-int8-static")
    model = bert.backend._quantize_static(
        bert.model.clone(), recipe.quantize, bert.calibration, bert.exported.input_names
    )
    folder = bert.workdir / "int8-padded"
    folder.mkdir()
    ov.save_model(model, str(folder / openvino_backend.MODEL_FILE))
    return folder


def _created_ops(before: Any, after: Any) -> list[Any]:
    names = {op.get_friendly_name() for op in before.get_ops()}
    return [op for op in after.get_ops() if op.get_friendly_name() not in names]


def test_the_packing_uses_no_integer_elementwise_ops(bert: Exported) -> None:
    created = _created_ops(bert.model, remove_padding(bert.model))
    kinds = {op.get_type_name() for op in created}
    assert "NonZero" in kinds and "Gather" in kinds
    assert not kinds & _INTEGER_ELTWISE, kinds


def test_a_quantised_graph_is_packed_as_fully_as_the_float_one(
    bert: Exported, quantised: Path
) -> None:
    import openvino as ov

    model = ov.Core().read_model(str(quantised / openvino_backend.MODEL_FILE))
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    unpadded = remove_padding(model)

    def gathers(before: Any, after: Any) -> int:
        return sum(op.get_type_name() == "Gather" for op in _created_ops(before, after))

    # Pack once, unpack at each attention's Q, K, V and at the output: the same as fp32,
    # so NNCF's scales and quantisers did not stop the residual stream from being packed.
    assert gathers(model, unpadded) == gathers(bert.model, remove_padding(bert.model))
    for feeds in (bert.batch, bert.single):  # compiled as validation and the runner do
        mask = feeds["attention_mask"].astype(bool)
        expected = openvino_backend.OpenVinoSession(model, "CPU", 1).run(feeds)
        actual = openvino_backend.OpenVinoSession(unpadded, "CPU", 1).run(feeds)
        np.testing.assert_allclose(
            actual["last_hidden_state"][mask], expected["last_hidden_state"][mask], atol=1e-5
        )


def test_the_int8_bundle_is_the_quantised_model_with_padding_removed(
    bert: Exported, quantised: Path
) -> None:
    artifact = bert.backend.build(
        bert.exported,
        _candidate("openvino-int8-static"),
        bert.info,
        bert.calibration,
        bert.workdir / "int8",
    )
    assert any(note.startswith("padding removed") for note in artifact.notes), artifact.notes
    assert not (artifact.directory.parent / "out-unpadded").exists()
    padded = openvino_backend.OpenVinoSession(
        quantised / openvino_backend.MODEL_FILE, "CPU", 1
    ).run(bert.batch)["last_hidden_state"]
    shipped = bert.backend.load(artifact, "CPU", 1).run(bert.batch)["last_hidden_state"]
    mask = bert.batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(shipped[mask], padded[mask], atol=1e-5)
    assert not shipped[~mask].any()


def test_a_rewrite_broken_only_once_quantised_is_not_shipped(
    bert: Exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old check ran on the fp32 graph before NNCF: this one would have shipped."""
    import openvino.opset13 as ops

    def zeroed_when_quantised(model: Any) -> Any:
        unpadded = remove_padding(model)
        if any(op.get_type_name() == "FakeQuantize" for op in model.get_ops()):
            result = unpadded.get_results()[0]
            zero = ops.multiply(result.input_value(0), ops.constant(np.float32(0)))
            result.input(0).replace_source_output(zero.output(0))
        return unpadded

    monkeypatch.setattr(openvino_backend, "remove_padding", zeroed_when_quantised)
    artifact = bert.backend.build(
        bert.exported,
        _candidate("openvino-int8-static"),
        bert.info,
        bert.calibration,
        bert.workdir / "int8-broken",
    )
    kept = [note for note in artifact.notes if note.startswith("padding kept")]
    assert kept and "differs by 1 (relative)" in kept[0], artifact.notes
    shipped = bert.backend.load(artifact, "CPU", 1).run(bert.batch)["last_hidden_state"]
    assert shipped[~bert.batch["attention_mask"].astype(bool)].any()  # padding computed


_AVX2_CHECK = """
import json, shutil, sys
from pathlib import Path
import numpy as np
from edgeport.backends import openvino as backend

args = json.loads(sys.argv[1])
def feeds(values):
    return {name: np.array(value, np.int64) for name, value in values.items()}
calibration = [feeds(values) for values in args["calibration"]]
batch = feeds(args["batch"])
report = {}
for name, source in args["models"].items():
    out = Path(args["workdir"]) / name
    shutil.copytree(source, out)
    note = backend._remove_padding(out, "CPU", calibration, args["max_length"], fp16=False)
    reference = backend.OpenVinoSession(Path(source) / backend.MODEL_FILE, "CPU", 2)
    shipped = backend.OpenVinoSession(out / backend.MODEL_FILE, "CPU", 2)
    errors = []
    for feeds in [*calibration, batch]:
        mask = feeds["attention_mask"].astype(bool)
        expected = reference.run(feeds)["last_hidden_state"][mask]
        actual = shipped.run(feeds)["last_hidden_state"][mask]
        errors.append(float(np.abs(expected - actual).max() / np.abs(expected).max()))
    report[name] = {"note": note, "error": max(errors)}
print(json.dumps(report))
"""


def test_under_an_avx2_cpu_padding_is_removed_exactly_or_kept(
    bert: Exported, quantised: Path, tmp_path: Path
) -> None:
    """ONEDNN_MAX_CPU_ISA=AVX2 makes the CPU plugin dispatch as on an AVX2-only host,
    where the first rewrite's outputs were all zero and its check still passed."""
    import json
    import os
    import subprocess
    import sys

    def lists(feeds: Feeds) -> dict[str, Any]:
        return {name: values.tolist() for name, values in feeds.items()}

    args = {
        "calibration": [lists(feeds) for feeds in bert.calibration],
        "batch": lists(bert.batch),
        "max_length": bert.info.max_length,
        "workdir": str(tmp_path / "work"),
        "models": {"fp32": str(bert.exported.directory), "int8": str(quantised)},
    }
    result = subprocess.run(
        [sys.executable, "-c", _AVX2_CHECK, json.dumps(args)],
        env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name, outcome in report.items():
        if outcome["note"].startswith("padding removed"):
            assert outcome["error"] <= 1e-4, (name, outcome)
        else:
            assert outcome["note"].startswith("padding kept"), (name, outcome)
            assert outcome["error"] == 0, (name, outcome)  # the padded model, unchanged


@pytest.mark.slow
@needs_minilm
def test_minilm_fp32_on_an_avx2_cpu_ships_without_padding_and_matches(tmp_path: Path) -> None:
    """Issue 12, part 5, as reported: validated at cosine 0.0000 after its check passed."""
    import json

    result = run_cli(
        "convert", MINILM, "--profile", "x86-64-avx512-vnni", "--recipe", "openvino-fp32",
        "--out", str(tmp_path / "bundle"), "--json",
        env={"ONEDNN_MAX_CPU_ISA": "AVX2"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    assert payload["metrics"]["embedding_cosine_min"] >= 0.9999
    (attempt,) = payload["attempts"]
    assert "padding removed" in attempt["detail"], attempt
