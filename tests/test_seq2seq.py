"""Encoder-decoders (Whisper, T5) as two-part bundles: the scores, the detokeniser, the
KV-cache decoding loop on both runtimes against PyTorch, and a random-weight conversion
end to end (plan, convert, run.py, verify.py).

The trained tiny Whisper and tiny T5 (examples/) are converted in tests/test_speech.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from edgeport.runners import ondevice

PYDOC = Path(__file__).resolve().parents[2] / "shared" / "models" / "tiny-llama-pydoc"


def test_chrf_matches_sacrebleu() -> None:
    """Reference values from sacrebleu 2.6 `corpus_chrf(hyps, [refs]).score`; where both
    sides are empty sacrebleu says 0, edgeport 100 (the converted model said what the
    original said)."""
    assert ondevice.chrf(["le chat noir"], ["le chat noir"]) == pytest.approx(100.0)
    assert ondevice.chrf(["le chat"], ["le chien"]) == pytest.approx(29.7635850388144)
    assert ondevice.chrf(
        ["pomme le verte rouge pomme une", "la pomme chien", "voit", "chat une verte"],
        ["la mange", "la petit la la grand chien", "rouge pomme voit une petit", "chat"],
    ) == pytest.approx(16.13703912571852)
    assert ondevice.chrf([""], [""]) == 100.0
    assert ondevice.chrf([""], ["bonjour"]) == 0.0


def test_word_errors_ignore_case_and_punctuation() -> None:
    assert ondevice.word_errors("The cat, sat.", "the cat sat") == (0, 3)
    assert ondevice.word_errors("the cat sat on", "the cat sat") == (1, 3)
    assert ondevice.word_errors("", "the cat") == (2, 2)


def test_seq2seq_metrics_count_empty_outputs_only_where_the_original_spoke() -> None:
    values = ondevice.seq2seq_metrics(
        [[5, 6], [7], []], [[5, 6], [], []], ["a b", "c", ""], ["a b", "", ""]
    )
    assert values["output_identical"] == pytest.approx(2 / 3)
    assert values["empty_outputs"] == 1.0
    assert values["wer"] == pytest.approx(1 / 3)


def test_token_metrics_are_edit_based() -> None:
    values = ondevice.token_metrics([np.array([1, 2, 3, 4])], [np.array([1, 3, 4])])
    assert values == {"output_identical": 0.0, "token_agreement": 0.75}


@pytest.mark.skipif(not PYDOC.is_dir(), reason="needs ../shared/models/tiny-llama-pydoc")
def test_detokenizer_matches_tokenizers_byte_level() -> None:
    from tokenizers import Tokenizer

    path = PYDOC / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    text = "Return the sum of x and y; raise ValueError if x < 0 — café, 東京."
    ids = tokenizer.encode(text).ids
    assert ondevice.Detokenizer(path).decode(ids) == tokenizer.decode(ids)


def test_detokenizer_matches_tokenizers_metaspace(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    corpus = ["Le petit chat voit la voiture rouge.", "Où est la gare ? Ça va très bien."] * 20
    tokenizer.train_from_iterator(corpus, trainer)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    for text in corpus[:2]:
        ids = [*tokenizer.encode(text).ids, 1]  # the end token is special: dropped
        assert ondevice.Detokenizer(path).decode(ids) == tokenizer.decode(ids)


def test_decoding_rules_suppress_tokens() -> None:
    rules = ondevice.DecodingRules((1, 2), frozenset({0}), (3,), (0,), 4)
    logits = np.array([5.0, 1.0, 1.0, 9.0, 2.0])
    assert rules.choose(logits, first=True) == 4  # 3 suppressed, the end token at first
    assert rules.choose(logits, first=False) == 0
    assert ondevice.DecodingRules.from_spec({"decoding": rules.as_spec()}) == rules
    with pytest.raises(ondevice.BundleError, match=r"runtime\.decoding"):
        ondevice.DecodingRules.from_spec({})


def build_tiny_whisper(folder: Path, seed: int = 0) -> Path:
    """A random 2+2-layer Whisper with the tiny-llama-pydoc byte-level tokenizer."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=4096,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=48,
        decoder_start_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        bos_token_id=1,
    )
    WhisperForConditionalGeneration(config).eval().save_pretrained(folder)
    WhisperFeatureExtractor().save_pretrained(folder)
    shutil.copy(PYDOC / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def random_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not PYDOC.is_dir():
        pytest.skip("needs ../shared/models/tiny-llama-pydoc")
    return build_tiny_whisper(tmp_path_factory.mktemp("models") / "rand-whisper")


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_random_whisper_bundle_runs_and_verifies(random_whisper: Path, tmp_path: Path) -> None:
    """Both runtimes' KV-cache loops give PyTorch's tokens (a random model babbles the
    same tokens to its last position: any cache slip shows); the chosen bundle runs a
    WAV longer than 30 s window by window and verifies itself; where the user gave a
    transcript, the word error rate against it is reported."""
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    rng = np.random.default_rng(1)
    for k in range(6):  # the user's WAV files: 4 validate, 2 calibrate
        write_wav(recordings / f"{k}.wav", 0.1 * rng.standard_normal(8000 + 4000 * k), 16000)
    (recordings / "0.txt").write_text("hello world\n")
    result = run_cli(
        "convert", str(random_whisper), "--profile", "intel-n100", "--out",
        str(tmp_path / "bundle"), "-r", "onnx-fp32", "-r", "openvino-fp32",
        "--samples", str(recordings),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = tmp_path / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    runtime = manifest["runtime"]
    assert [p["name"] for p in runtime["parts"]] == ["encoder", "decoder"]
    assert runtime["decoding"]["prompt"] == [1]
    assert [a["status"] for a in manifest["attempts"]] == ["passed", "passed"]
    assert manifest["metrics"]["output_identical"] == 1.0
    # 0.txt is 0.wav's transcript: the word error rate against it is reported, for the
    # original and the bundle alike (a random model babbles: it is high, and not gated).
    metrics = manifest["metrics"]
    assert metrics["wer_vs_truth"] == metrics["wer_vs_truth_original"] > 0.5
    rate = 22050  # resampled to 16 kHz by run.py
    t = np.arange(int(rate * 33.5)) / rate
    wav = write_wav(tmp_path / "long.wav", 0.3 * np.sin(2 * np.pi * 220 * t), rate)
    run = subprocess.run(
        [sys.executable, str(bundle / "run.py"), str(wav), str(wav), "--json"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "real-time factor" in run.stderr
    results = json.loads(run.stdout)["results"]
    assert len(results) == 2 and results[0] == results[1]
    verify = subprocess.run(
        [sys.executable, str(bundle / "verify.py")], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "token_agreement=1.000000" in verify.stdout
    bad = subprocess.run(
        [sys.executable, str(bundle / "run.py"), str(tmp_path / "missing.wav")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "missing.wav" in bad.stderr


@pytest.mark.slow
def test_decoder_loops_agree_with_pytorch(random_whisper: Path, tmp_path: Path) -> None:
    """ONNX Runtime's merged decoder and OpenVINO's stateful one, driven by the one loop,
    give PyTorch's greedy tokens and its teacher-forced choices, sequence after sequence
    (the cache is reset between them)."""
    from edgeport.backends import Artifact
    from edgeport.backends.onnxruntime import OnnxRuntimeBackend
    from edgeport.backends.openvino import OpenVinoBackend
    from edgeport.families import family_of
    from edgeport.hub import resolve
    from edgeport.model_info import inspect_model
    from edgeport.validate import ReferenceModel

    info = inspect_model(resolve(str(random_whisper)))
    family = family_of(info)
    rules = family.decoding_rules(info)  # type: ignore[attr-defined]
    reference = ReferenceModel(info, trust_remote_code=False)
    rng = np.random.default_rng(0)
    inputs = [{"input_features": rng.normal(size=(1, 80, 3000)).astype(np.float32)} for _ in "ab"]
    torch_decoder = reference.seq2seq_decoder()
    expected = [ondevice.greedy_decode(torch_decoder, reference.encoder(f), rules) for f in inputs]
    for backend in (OnnxRuntimeBackend(), OpenVinoBackend()):
        exported = backend.export(
            info, tmp_path / backend.target_id, trust_remote_code=False,
            parts=family.export_parts(info),
        )  # fmt: skip
        encoder, decoder = (
            backend.load(
                Artifact(p.directory, p.model_file, (), p.input_names, p.output_names), "CPU", 2
            )
            for p in exported.parts
        )
        for feeds, tokens in zip(inputs, expected, strict=True):
            states = ondevice.encode(encoder.run, feeds)
            assert ondevice.greedy_decode(decoder.run, states, rules) == tokens
            forced = ondevice.teacher_forced(decoder.run, states, rules, tokens)
            assert forced[: len(tokens)] == tokens
