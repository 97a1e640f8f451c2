"""llama.cpp target: GGUF writer, llama.cpp's quantiser, validation through llama.cpp, the
bundle, and the one-line errors. Fast tests use tiny random Llama/Qwen2 checkpoints with the
real tokenizer of tiny-llama-pydoc; the slow one converts tiny-llama-pydoc itself and checks
issue 15's done criteria."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_LLAMA, build_tiny_decoder, run_cli

from edgeport.backends import Artifact, DecoderSession
from edgeport.catalog import load_catalog
from edgeport.errors import BadInputError, UnsupportedError
from edgeport.hub import resolve
from edgeport.model_info import inspect_model
from edgeport.planner import plan

INSTALL = 'pip install -c constraints.txt "edgeport[gguf]"'
try:
    import gguf  # noqa: F401
    import llama_cpp
except ImportError:
    pytest.skip(f"llama.cpp target not installed: {INSTALL}", allow_module_level=True)

from edgeport.backends.gguf_writer import write_gguf  # noqa: E402
from edgeport.backends.llama_cpp import (  # noqa: E402
    LlamaCppBackend,
    LlamaCppDecoderSession,
    gguf_tensor_types,
    quantize,
    type_notes,
)

pytestmark = pytest.mark.skipif(
    not (TINY_LLAMA / "tokenizer.json").is_file(), reason=f"{TINY_LLAMA} is absent"
)
CATALOG = load_catalog()
# Qwen2's pre-tokenizer, as Qwen2.5's tokenizer.json spells it: a Split on this regex, then
# byte-level mapping without its own regex.
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEXT = "The with statement is used to wrap the execution of a block with methods defined by"


def build_tied_qwen2(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer Qwen2 (biases on q/k/v, lm_head tied to the embeddings) with a
    Qwen2-style pre-tokenizer over tiny-llama-pydoc's byte-level BPE vocabulary."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(TINY_LLAMA / name, folder / name)
    tokenizer = json.loads((TINY_LLAMA / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": QWEN2_REGEX},
                "behavior": "Isolated",
                "invert": False,
            },
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": False,
                "use_regex": False,
            },
        ],
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    config = AutoConfig.for_model(
        "qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        vocab_size=4096,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tied_qwen2(tmp_path_factory.mktemp("models") / "tiny-qwen2")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_decoder(tmp_path_factory.mktemp("models") / "tiny-llama")


def _torch_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32)
    with torch.no_grad():
        return np.asarray(model(torch.tensor([ids])).logits.numpy())


def _ids(text: str = TEXT) -> list[int]:
    from tokenizers import Tokenizer

    return list(Tokenizer.from_file(str(TINY_LLAMA / "tokenizer.json")).encode(text).ids)


# ----------------------------------------------------------------- writer


@pytest.mark.parametrize("name", ["qwen2", "llama", "qwen3", "mistral"])
def test_f32_gguf_logits_match_pytorch(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Tied Qwen2 (q/k/v biases), Llama (q/k permuted), Qwen3 (q/k norms), Mistral."""
    if name in {"qwen2", "llama"}:
        folder: Path = request.getfixturevalue(name)
    else:
        folder = build_tiny_decoder(tmp_path / name, name)
    path = tmp_path / "model.gguf"
    write_gguf(folder, path, "f32")
    session = LlamaCppDecoderSession(path, threads=2)
    assert isinstance(session, DecoderSession)
    ids = _ids()
    ours = session.run({"input_ids": np.array([ids])})["logits"]
    reference = _torch_logits(folder, ids)
    assert ours.shape == reference.shape
    scale = float(np.abs(reference).max())
    assert float(np.abs(ours - reference).max()) <= 2e-3 * scale
    assert (ours.argmax(-1) == reference.argmax(-1)).all()
    # Greedy generation through llama.cpp's cache matches the full-window argmax.
    generated = session.generate(ids[:4], 6)
    window = session.run({"input_ids": np.array([ids[:4] + generated[:-1]])})["logits"]
    assert generated == [int(t) for t in window[0, 3:].argmax(-1)]


def test_tied_qwen2_has_one_embedding_matrix_and_qwen2_pretokenizer(
    qwen2: Path, tmp_path: Path
) -> None:
    import gguf

    path = tmp_path / "model.gguf"
    notes = write_gguf(qwen2, path, "f16")
    names = {name: kind for name, kind, _ in gguf_tensor_types(path)}
    assert "output.weight" not in names and names["token_embd.weight"] == "F16"
    assert names["blk.0.attn_q.bias"] == "F32" and names["blk.0.attn_norm.weight"] == "F32"
    reader = gguf.GGUFReader(str(path))
    pre = reader.fields["tokenizer.ggml.pre"]
    assert bytes(pre.parts[-1]).decode() == "qwen2"
    assert any("tied" in note for note in notes)
    # llama.cpp tokenises like tokenizer.json on plain text.
    model = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    assert model.tokenize(TEXT.encode(), add_bos=False) == _ids()


def test_unknown_architecture_is_unsupported_in_one_line(tmp_path: Path) -> None:
    folder = build_tiny_decoder(tmp_path / "gpt2", "gpt2")
    with pytest.raises(UnsupportedError) as caught:
        write_gguf(folder, tmp_path / "model.gguf", "f16")
    message = str(caught.value)
    assert caught.value.exit_code == 4 and "\n" not in message
    assert "GPT2LMHeadModel" in message and "LlamaForCausalLM" in message


# ----------------------------------------------------------------- quantiser


def test_quantiser_records_types_other_than_nominal(qwen2: Path, tmp_path: Path) -> None:
    source = tmp_path / "f32.gguf"
    write_gguf(qwen2, source, "f32")
    out = tmp_path / "q4_k_m.gguf"
    quantize(source, out, "Q4_K_M", threads=2)
    kinds = {kind for _, kind, dims in gguf_tensor_types(out) if dims >= 2}
    # 64-wide rows fit no 256-value K-quant block: llama.cpp falls back per tensor.
    assert "Q4_K" not in kinds
    notes = type_notes(out, "Q4_K_M")
    assert notes[0].startswith("GGUF Q4_K_M: 0 of ")
    assert any("llama.cpp's choice" in note for note in notes[1:])
    session = LlamaCppDecoderSession(out, threads=2)
    assert session.run({"input_ids": np.array([_ids()])})["logits"].shape == (1, len(_ids()), 4096)


def test_importance_matrix_reweights_in_place_and_keeps_types(llama: Path, tmp_path: Path) -> None:
    from edgeport.backends.gguf_quantize import activation_importance, apply_importance

    source = tmp_path / "f32.gguf"
    write_gguf(llama, source, "f32")
    out = tmp_path / "q4_0.gguf"
    quantize(source, out, "Q4_0", threads=2)
    before = {name: kind for name, kind, _ in gguf_tensor_types(out)}
    raw = out.read_bytes()
    calibration = [{"input_ids": np.array([_ids()])}]
    importance = activation_importance(llama, calibration, layers=2)
    assert importance["blk.0.attn_q.weight"].shape == (64,)
    assert importance["blk.0.ffn_down.weight"].shape == (128,)
    done = apply_importance(source, out, importance)
    assert "blk.1.ffn_gate.weight" in done
    assert {name: kind for name, kind, _ in gguf_tensor_types(out)} == before
    assert len(out.read_bytes()) == len(raw) and out.read_bytes() != raw
    logits = LlamaCppDecoderSession(out, threads=2).run({"input_ids": np.array([_ids()])})
    assert np.isfinite(logits["logits"]).all()


def test_recipe_tensor_types_are_requantised_and_reported(llama: Path, tmp_path: Path) -> None:
    source = tmp_path / "f32.gguf"
    write_gguf(llama, source, "f32")
    out = tmp_path / "q4_0.gguf"
    quantize(source, out, "Q4_0", threads=2)
    plain = tmp_path / "plain.gguf"
    shutil.copy2(out, plain)
    patterns = {r"blk\.0\.": "Q8_0", "attn_v": "F16"}
    changed = LlamaCppBackend._retype(source, out, patterns, {})
    kinds = {name: kind for name, kind, _ in gguf_tensor_types(out)}
    assert kinds["blk.0.attn_q.weight"] == "Q8_0" and kinds["blk.0.attn_v.weight"] == "Q8_0"
    assert kinds["blk.1.attn_v.weight"] == "F16" and kinds["blk.1.attn_q.weight"] == "Q4_0"
    assert kinds["blk.0.attn_norm.weight"] == "F32"  # 1-D tensors are never retyped
    notes = type_notes(out, "Q4_0", changed)
    assert any("as Q8_0 (the recipe's): blk.0." in note for note in notes)
    feeds = {"input_ids": np.array([_ids()])}
    reference = _torch_logits(llama, _ids())
    error = {
        path.name: float(
            np.abs(LlamaCppDecoderSession(path, 2).run(feeds)["logits"] - reference).mean()
        )
        for path in (plain, out)
    }
    assert error[out.name] < error[plain.name]  # more bits where the recipe asks: closer


def test_a_recipe_type_the_rows_do_not_fit_takes_llama_cpps_fallback(
    llama: Path, tmp_path: Path
) -> None:
    """SmolLM2's 576-wide rows do not fit Q6_K's 256-value blocks; nor do this model's 64:
    llama.cpp's quantiser gives such a matrix Q8_0, and so does a recipe's type."""
    source = tmp_path / "f32.gguf"
    write_gguf(llama, source, "f32")
    out = tmp_path / "q4_0.gguf"
    quantize(source, out, "Q4_0", threads=2)
    LlamaCppBackend._retype(source, out, {"attn_q": "Q6_K"}, {})
    kinds = {name: kind for name, kind, _ in gguf_tensor_types(out)}
    assert kinds["blk.0.attn_q.weight"] == "Q8_0"
    logits = LlamaCppDecoderSession(out, threads=2).run({"input_ids": np.array([_ids()])})
    assert np.isfinite(logits["logits"]).all()


def test_gguf_recipes_name_their_type_and_only_gguf_recipes_do() -> None:
    from pydantic import ValidationError

    from edgeport.schemas import Quantization

    assert Quantization(scheme="gguf", gguf_type="Q4_K_M").precision == "int4"
    assert Quantization(scheme="gguf", gguf_type="Q8_0").precision == "int8"
    with pytest.raises(ValidationError):
        Quantization(scheme="gguf")
    with pytest.raises(ValidationError):
        Quantization(scheme="int4-weight", gguf_type="Q4_K_M")
    with pytest.raises(ValidationError):
        Quantization(scheme="gguf", gguf_type="Q4_0", gguf_tensor_types={"(": "Q8_0"})
    recipes = [r for r in CATALOG.recipes.values() if r.target == "llama.cpp"]
    assert {r.quantize.gguf_type for r in recipes} >= {
        "F16",
        "Q8_0",
        "Q6_K",
        "Q5_K_M",
        "Q4_K_M",
        "Q4_0",
        "IQ4_XS",
    }


# ----------------------------------------------------------------- errors


def test_truncated_gguf_is_one_line_bad_input(llama: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    write_gguf(llama, path, "f16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for attempt in (
        lambda: LlamaCppDecoderSession(path, threads=1),
        lambda: quantize(path, tmp_path / "q.gguf", "Q8_0", threads=1),
    ):
        with pytest.raises(BadInputError) as caught:
            attempt()
        assert caught.value.exit_code == 2 and "\n" not in str(caught.value)
        assert "model.gguf" in str(caught.value)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(BadInputError):
        LlamaCppDecoderSession(garbage, threads=1)


def test_truncated_gguf_in_a_bundle_loader_is_one_line(llama: Path, tmp_path: Path) -> None:
    from edgeport.runners import ondevice

    path = tmp_path / "model.gguf"
    write_gguf(llama, path, "f16")
    path.write_bytes(path.read_bytes()[:1000])
    spec = {"runner": "llama.cpp", "model_file": "model.gguf", "threads": 1}
    with pytest.raises(ondevice.BundleError) as caught:
        ondevice.load_runtime(tmp_path, spec)
    assert caught.value.exit_code == ondevice.EXIT_FAILED and "\n" not in str(caught.value)


def test_missing_llama_cpp_drops_the_target_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgeport.backends import host_targets

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails, find_spec says None
    available = host_targets(CATALOG.targets.values())
    assert "llama.cpp" not in available and "onnxruntime" in available
    info = inspect_model(resolve(str(TINY_LLAMA)))
    result = plan(
        info,
        CATALOG.profile("raspberry-pi-5"),
        CATALOG.recipes.values(),
        CATALOG.targets,
        available,
    )
    dropped = [d for d in result.dropped if d.target_id == "llama.cpp"]
    assert dropped and all(d.code == "extra" and INSTALL in d.reason for d in dropped)
    from edgeport.dependencies import install_hint

    assert INSTALL in install_hint("llama_cpp") and INSTALL in install_hint("gguf")


def test_convert_without_llama_cpp_says_what_to_install(tmp_path: Path) -> None:
    code = "import sys; sys.modules['llama_cpp'] = None\nfrom edgeport.cli import main; main()\n"
    args = [
        "convert",
        str(TINY_LLAMA),
        "--profile",
        "raspberry-pi-5",
        "--recipe",
        "gguf-q4_k_m",
        "--out",
        str(tmp_path / "bundle"),
    ]
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 4, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and INSTALL in error[0]


@pytest.mark.slow
def test_unknown_family_through_the_cli_is_exit_4(tmp_path: Path) -> None:
    folder = build_tiny_decoder(tmp_path / "gpt2", "gpt2")
    result = run_cli(
        "convert",
        str(folder),
        "--profile",
        "raspberry-pi-5",
        "--recipe",
        "gguf-q8_0",
        "--out",
        str(tmp_path / "bundle"),
    )
    assert result.returncode == 4, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "GGUF writer does not know GPT2LMHeadModel" in error[0]


def test_missing_llama_cpp_on_the_device_is_one_line(tmp_path: Path) -> None:
    """verify.py/run.py on a device without llama-cpp-python: exit 4 and the pip line."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "llama_cpp.py").write_text("raise ImportError('llama_cpp is not on the device')\n")
    code = (
        "import sys; from pathlib import Path; from edgeport.runners import ondevice\n"
        "try:\n"
        "    ondevice.llama_cpp_model(Path('model.gguf'), 1)\n"
        "except ondevice.BundleError as exc:\n"
        "    print(exc); sys.exit(exc.exit_code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{Path.cwd()}"},
        timeout=120,
    )
    assert result.returncode == 4, result.stderr
    assert result.stdout.strip().count("\n") == 0
    assert "llama-cpp-python is not installed: pip install -r requirements.txt" in result.stdout


# ----------------------------------------------------------------- planning


def test_gguf_candidates_compete_with_the_other_targets() -> None:
    info = inspect_model(resolve(str(TINY_LLAMA)))
    result = plan(
        info,
        CATALOG.profile("raspberry-pi-5"),
        CATALOG.recipes.values(),
        CATALOG.targets,
        frozenset(CATALOG.targets),
    )
    targets = {c.target.id for c in result.candidates}
    assert {"llama.cpp", "onnxruntime"} <= targets
    gguf_ids = {c.recipe.id for c in result.candidates if c.target.id == "llama.cpp"}
    assert {"gguf-q4_k_m", "gguf-q8_0", "gguf-f16"} <= gguf_ids


def test_backend_builds_an_artifact_with_modelfile_and_readme(llama: Path, tmp_path: Path) -> None:
    info = inspect_model(resolve(str(llama)))
    backend = LlamaCppBackend()
    exported = backend.export(info, tmp_path, trust_remote_code=False)
    candidate: Any = next(
        c
        for c in plan(
            info,
            CATALOG.profile("raspberry-pi-5"),
            CATALOG.recipes.values(),
            CATALOG.targets,
            frozenset(CATALOG.targets),
        ).candidates
        if c.recipe.id == "gguf-q8_0"
    )
    artifact: Artifact = backend.build(exported, candidate, info, [], tmp_path)
    assert artifact.files == ("model.gguf", "Modelfile", "README.md")
    assert "FROM ./model.gguf" in (artifact.directory / "Modelfile").read_text()
    readme = (artifact.directory / "README.md").read_text()
    assert "llama-cli -m model.gguf" in readme and "llama-server -m model.gguf" in readme
    assert any(note.startswith("GGUF Q8_0:") for note in artifact.notes)
    assert artifact.model_bytes == (artifact.directory / "model.gguf").stat().st_size


# ----------------------------------------------------------------- the real model (slow)


@pytest.mark.slow
def test_tiny_llama_pydoc_q4_k_m_for_raspberry_pi_5(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = run_cli(
        "convert",
        str(TINY_LLAMA),
        "--profile",
        "raspberry-pi-5",
        "--recipe",
        "gguf-q4_k_m",
        "--out",
        str(out),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runtime"]["runner"] == "llama.cpp"
    metrics = manifest["metrics"]
    # llama.cpp's plain Q4_K_M measures 0.887 here; the recipe's Q8_0 embeddings, importance
    # matrix and Q6_K layer 0 / attn_v reach 0.959 (docs/llama-cpp-notes.md).
    assert metrics["next_token_agreement"] >= 0.95
    assert metrics["perplexity_increase"] <= 0.02
    assert (out / "model.gguf").stat().st_size <= 0.20 * 27_282_456
    assert any("(the recipe's)" in note for note in manifest["notes"])
    assert "kl_divergence_mean" in metrics and "kl_divergence_p99" in metrics
    assert (out / "Modelfile").is_file() and (out / "model.gguf").is_file()
    requirements = (out / "requirements.txt").read_text()
    assert "llama-cpp-python==" in requirements and "tokenizers" not in requirements
    generated = subprocess.run(
        [sys.executable, str(out / "run.py"), "def add(", "--max-new-tokens", "16"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.strip() and "tokens/s" in generated.stderr
    verified = subprocess.run(
        [sys.executable, str(out / "verify.py")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
