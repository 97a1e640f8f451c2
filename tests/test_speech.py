"""The issue's bar for speech and translation, on the trained tiny models of examples/:
their bundles say what PyTorch says on inputs they did not calibrate on, with only the
runtime and numpy (plus tokenizers for translation), and a fragile recipe never ships.

All slow (`pytest -m slow tests/test_speech.py`): each converts a real model end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from edgeport.runners import ondevice

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WHISPER = EXAMPLES / "speech" / "tiny-whisper"
T5 = EXAMPLES / "text" / "tiny-t5-en-fr"
T5_SAMPLES = EXAMPLES / "text" / "translation-samples"

pytestmark = pytest.mark.slow


def run_bundle(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(bundle / "run.py"), *args],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip


def pytorch_transcripts(folder: Path, utterances: list[object]) -> list[str]:
    """transformers' own greedy Whisper generate(), not edgeport's loop."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    processor = WhisperProcessor.from_pretrained(folder)
    texts = []
    for utterance in utterances:
        features = processor(
            utterance.samples,
            sampling_rate=16000,
            return_tensors="pt",  # type: ignore[attr-defined]
        ).input_features
        with torch.inference_mode():
            ids = model.generate(features, num_beams=1, do_sample=False, max_new_tokens=120)
        texts.append(processor.batch_decode(ids, skip_special_tokens=True)[0].strip())
    return texts


@pytest.fixture(scope="module")
def validation_wavs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str]]:
    from edgeport.speech_samples import builtin_utterances, espeak_available

    if not WHISPER.is_dir():
        pytest.skip(f"{WHISPER} missing: python scripts/train_whisper_model.py")
    if not espeak_available():
        pytest.skip("needs espeak-ng: apt-get install espeak-ng")
    folder = tmp_path_factory.mktemp("speech")
    utterances = builtin_utterances("validation")
    paths = []
    for index, utterance in enumerate(utterances):
        paths.append(folder / f"{index:02d}.wav")
        with wave.open(str(paths[-1]), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            pcm = np.clip(np.round(utterance.samples * 32767), -32768, 32767).astype("<i2")
            out.writeframes(pcm.tobytes())
    # The reference reads the same 16-bit samples the bundle reads.
    read = [ondevice.read_wav(p)[0] for p in paths]
    for utterance, samples in zip(utterances, read, strict=True):
        object.__setattr__(utterance, "samples", samples)
    return paths, pytorch_transcripts(WHISPER, utterances)


@pytest.mark.parametrize("profile", ["raspberry-pi-5", "intel-n100"])
def test_tiny_whisper_transcribes_as_pytorch_does(
    profile: str, validation_wavs: tuple[list[Path], list[str]], tmp_path: Path
) -> None:
    paths, expected = validation_wavs
    out = tmp_path / "bundle"
    result = run_cli("convert", str(WHISPER), "--profile", profile, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    parts = {p["name"]: p["precision"] for p in manifest["runtime"]["parts"]}
    assert set(parts) == {"encoder", "decoder"}
    requirements = (out / "requirements.txt").read_text().split()
    assert not [r for r in requirements if not r.startswith(("numpy", "onnxruntime", "openvino"))]
    ran = run_bundle(out, *map(str, paths), "--json")
    assert ran.returncode == 0, ran.stderr
    got = [r["text"] for r in json.loads(ran.stdout)["results"]]
    identical = float(np.mean([a == b for a, b in zip(got, expected, strict=True)]))
    edits = words = 0
    for hypothesis, reference in zip(got, expected, strict=True):
        e, w = ondevice.word_errors(hypothesis, reference)
        edits, words = edits + e, words + w
    assert identical >= 0.95, (profile, parts, list(zip(got, expected, strict=True)))
    assert edits / words <= 0.02
    # A smaller candidate passed: the bundle is at most 0.35 of the fp32 model.
    fp32 = [a for a in manifest["attempts"] if a["precision"] == "fp32"]
    smaller = [
        a for a in manifest["attempts"] if a["status"] == "passed" and a["precision"] != "fp32"
    ]
    if smaller and fp32:
        assert manifest["recipe"]["precision"] != "fp32"
    assert "real-time factor" in ran.stderr


def test_encoder_int4_is_caught_by_the_gate(tmp_path: Path) -> None:
    """A deliberately fragile recipe (Whisper's encoder in 4-bit weights) misses the gate
    and ships only with --accept-degraded."""
    if not WHISPER.is_dir():
        pytest.skip(f"{WHISPER} missing")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "openvino-int4-encoder.yaml").write_text(
        "id: openvino-int4-encoder\n"
        "description: Whisper's encoder in 4-bit weights, data-free (fragile on purpose).\n"
        "target: openvino\n"
        "quantize:\n  scheme: int4-weight\n  group_size: 32\n  ratio: 1.0\n"
        "requires:\n  families: [speech-encoder]\n"
        "expect:\n  size_factor: 0.5\n  speedup: 1.0\n"
    )
    args = ("convert", str(WHISPER), "--profile", "intel-n100", "--recipes-dir", str(recipes),
            "-r", "openvino-int4-encoder")  # fmt: skip
    failed = run_cli(*args, "--out", str(tmp_path / "refused"))
    assert failed.returncode != 0
    assert "gate failed" in failed.stderr or "tolerance" in failed.stderr
    assert not (tmp_path / "refused").exists()
    shipped = run_cli(*args, "--out", str(tmp_path / "degraded"), "--accept-degraded")
    assert shipped.returncode == 0, shipped.stderr[-2000:]
    manifest = json.loads((tmp_path / "degraded" / "manifest.json").read_text())
    assert manifest["verdict"] != "passed"


@pytest.mark.parametrize("profile", ["raspberry-pi-5", "intel-n100"])
def test_tiny_t5_translates_as_pytorch_does(profile: str, tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    if not T5.is_dir():
        pytest.skip(f"{T5} missing: python scripts/train_translation_model.py")
    samples = T5_SAMPLES / "validation.txt"
    out = tmp_path / "bundle"
    result = run_cli(
        "convert", str(T5), "--profile", profile, "--out", str(out), "--samples", str(samples)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    texts = (T5_SAMPLES / "validation.txt").read_text().splitlines()[:32]
    ran = run_bundle(out, *texts, "--json")
    assert ran.returncode == 0, ran.stderr
    got = [r["text"] for r in json.loads(ran.stdout)["results"]]
    model = T5ForConditionalGeneration.from_pretrained(T5).eval()
    tokenizer = AutoTokenizer.from_pretrained(T5)
    expected = []
    for text in texts:
        with torch.inference_mode():
            ids = model.generate(
                **tokenizer(text, return_tensors="pt"), num_beams=1, max_new_tokens=64
            )
        expected.append(tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    identical = float(np.mean([a == b for a, b in zip(got, expected, strict=True)]))
    assert identical >= 0.95, list(zip(got, expected, strict=True))
    assert ondevice.chrf(got, expected) >= 95.0
