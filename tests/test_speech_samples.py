"""Synthesised speech and the user's WAV folder (edgeport/speech_samples.py)."""

from __future__ import annotations

import math
import shutil
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from edgeport import speech_samples
from edgeport.errors import BadInputError, UnsupportedError
from edgeport.speech_samples import (
    SAMPLING_RATE,
    Utterance,
    active_rms,
    builtin_utterances,
    describe_builtin,
    espeak_available,
    speech_sentences,
    suited_to_speech,
    synthesise,
    user_utterances,
)

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="apt-get install espeak-ng")


def _measured_snr(utterance: Utterance) -> float:
    """The SNR of a noisy utterance, from the clean speech synthesised again: the mixture
    is g·(speech + noise), so g is the projection on the clean speech and the rest is noise.
    """
    clean = synthesise(utterance.text, utterance.voice, utterance.speed, utterance.pitch)
    speech = clean.astype(np.float64)
    mixture = utterance.samples.astype(np.float64)
    scale = float(mixture @ speech / (speech @ speech))
    noise = mixture - scale * speech
    signal = active_rms((scale * speech).astype(np.float32))
    return 20 * math.log10(signal / float(np.sqrt(np.mean(noise**2))))


# --------------------------------------------------------------------------- sentences


def test_only_sentences_suited_to_speech_are_kept() -> None:
    assert suited_to_speech("The river burst its banks after three days of heavy rain.")
    assert suited_to_speech("The contract may be terminated with thirty days' notice.")
    assert suited_to_speech("My flight got cancelled and the airline won't refund me.")
    for unsuited in (
        "hello",  # a fragment
        "Tokyo, Japan",
        "Das Museum ist montags geschlossen.",  # ASCII, but not English
        "Il fait très froid ce matin, prends ton manteau.",
        "Москва — столица России.",
        "The the the the the",
        "Operating income fell by 4 percent as costs rose.",  # "4" or "four"?
        "while True: data = sock.recv(4096)",
        "Email support@example.org for help.",
        "Visit example.com for the details.",
        " ".join(["word"] * 20 + ["and", "the"] * 11),  # over 40 words
    ):
        assert not suited_to_speech(unsuited), unsuited


def test_calibration_and_validation_sentences_are_disjoint_english() -> None:
    calibration, validation = speech_sentences("calibration"), speech_sentences("validation")
    assert len(calibration) >= 10
    assert len(validation) >= 20
    assert set(calibration).isdisjoint(validation)
    assert "The dog barked at the mailman." in calibration
    assert "The cat sat on the mat." in validation
    assert all(sentence.isascii() for sentence in (*calibration, *validation))


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("rate_in", [8_000, 11_025, 22_050, 44_100, 48_000])
def test_resampler_keeps_speech_band_and_removes_what_would_alias(rate_in: int) -> None:
    time_in = np.arange(rate_in) / rate_in
    tone = np.sin(2 * np.pi * 1000 * time_in).astype(np.float32)
    resampled = speech_samples._resample(tone, rate_in, SAMPLING_RATE)
    assert resampled.dtype == np.float32
    assert len(resampled) == SAMPLING_RATE
    expected = np.sin(2 * np.pi * 1000 * np.arange(SAMPLING_RATE) / SAMPLING_RATE)
    middle = slice(2000, -2000)  # away from the zero padding at the edges
    assert np.max(np.abs(resampled[middle] - expected[middle])) < 1e-4
    if rate_in > 2 * 9000:
        # 9 kHz is above 16 kHz's Nyquist frequency: it must go, not fold down to 7 kHz.
        high = np.sin(2 * np.pi * 9000 * time_in).astype(np.float32)
        folded = speech_samples._resample(high, rate_in, SAMPLING_RATE)[middle]
        assert 20 * math.log10(float(np.sqrt(np.mean(folded**2))) / math.sqrt(0.5)) < -80


# --------------------------------------------------------------------------- built-in


def test_missing_espeak_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert not espeak_available()
    with pytest.raises(UnsupportedError, match="apt-get install espeak-ng"):
        builtin_utterances("calibration", 2)


@needs_espeak
def test_utterances_are_16khz_float32_speech_in_range() -> None:
    utterances = [*builtin_utterances("calibration"), *builtin_utterances("validation")]
    assert len(utterances) == 16 + 32
    for utterance in utterances:
        assert utterance.sampling_rate == SAMPLING_RATE
        assert utterance.samples.dtype == np.float32
        assert utterance.samples.ndim == 1
        assert 0.5 < utterance.seconds < 30
        assert float(np.abs(utterance.samples).max()) <= 1.0
        assert active_rms(utterance.samples) > 0.01
        assert utterance.has_transcript
        assert utterance.voice in utterance.name


@needs_espeak
def test_calibration_and_validation_speak_disjoint_texts() -> None:
    calibration = {u.text for u in builtin_utterances("calibration")}
    validation = {u.text for u in builtin_utterances("validation")}
    # The default counts go through every sentence of each split.
    assert calibration == set(speech_sentences("calibration"))
    assert validation == set(speech_sentences("validation"))
    assert calibration.isdisjoint(validation)


@needs_espeak
def test_eight_utterances_cover_voices_speeds_pitches_and_noise() -> None:
    utterances = builtin_utterances("validation", 8)
    assert len({u.voice for u in utterances}) >= 5
    assert {u.speed for u in utterances} == set(speech_samples.SPEEDS)
    assert {u.pitch for u in utterances} == set(speech_samples.PITCHES)
    assert {u.noise_db for u in utterances} == {None, 20.0, 10.0, 5.0}
    assert len({u.noise for u in utterances if u.noise is not None}) == 5
    assert all((u.noise is None) == (u.noise_db is None) for u in utterances)
    assert any("klatt" in u.voice for u in utterances)
    assert any("+f" in u.voice for u in utterances)


@needs_espeak
def test_same_utterances_every_time_and_for_any_count() -> None:
    first = builtin_utterances("calibration", 10)
    # espeak-ng runs again, not the process's cache.
    speech_samples._espeak.cache_clear()
    speech_samples._synthesised.cache_clear()
    second = builtin_utterances("calibration", 10)
    fewer = builtin_utterances("calibration", 4)
    for a, b in zip(first, second, strict=True):
        assert (a.text, a.voice, a.speed, a.pitch, a.noise_db, a.name) == (
            b.text,
            b.voice,
            b.speed,
            b.pitch,
            b.noise_db,
            b.name,
        )
        np.testing.assert_array_equal(a.samples, b.samples)
    for a, b in zip(first, fewer, strict=False):
        np.testing.assert_array_equal(a.samples, b.samples)
    # Callers get their own arrays: changing one leaves the cached speech alone.
    second[0].samples[:] = 0
    np.testing.assert_array_equal(builtin_utterances("calibration", 1)[0].samples, first[0].samples)


@needs_espeak
def test_noise_is_mixed_at_its_snr() -> None:
    noisy = [u for u in builtin_utterances("validation", 12) if u.noise_db is not None]
    assert len({u.noise for u in noisy}) == 5
    for utterance in noisy:
        assert utterance.noise_db is not None
        assert abs(_measured_snr(utterance) - utterance.noise_db) < 1.0, utterance.name


@needs_espeak
def test_synthesise_checks_its_settings() -> None:
    speech = synthesise("Please restart the router.", "en-gb-x-rp+m3", 150, 40)
    assert speech.dtype == np.float32
    assert len(speech) > SAMPLING_RATE // 2
    native = synthesise("Please restart the router.", "en-gb-x-rp+m3", 150, 40, rate=22_050)
    assert abs(len(native) * SAMPLING_RATE / 22_050 - len(speech)) <= 1
    with pytest.raises(ValueError, match="words per minute"):
        synthesise("Hello there, friend.", "en-us", 20, 50)
    with pytest.raises(ValueError, match="pitch"):
        synthesise("Hello there, friend.", "en-us", 150, 120)
    with pytest.raises(ValueError, match="empty"):
        synthesise("  ", "en-us", 150, 50)
    with pytest.raises(UnsupportedError, match="does-not-exist"):
        synthesise("Hello there, friend.", "does-not-exist", 150, 50)


def test_description_names_what_is_used() -> None:
    text = describe_builtin()
    assert "48 English utterances (16 calibration, 32 validation)" in text
    assert "espeak-ng" in text
    assert "en-us+klatt" in text
    assert "130/160/190 words per minute" in text
    assert "20, 10, 5 dB SNR" in text


# --------------------------------------------------------------------------- user files


def _write_wav(path: Path, signal: np.ndarray, rate: int, width: int) -> None:
    """`signal` (frames, or frames × channels, in [-1, 1]) as integer PCM."""
    frames = signal if signal.ndim == 2 else signal[:, None]
    if width == 1:
        data = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    else:
        values = np.round(frames * (2 ** (8 * width - 1) - 1)).astype("<i4")
        data = values.view(np.uint8).reshape(*values.shape, 4)[..., :width].tobytes()
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(frames.shape[1])
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(data)


def _tone(rate: int, seconds: float, frequency: float = 440.0) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * frequency * np.arange(round(rate * seconds)) / rate)


def _matches_tone(samples: np.ndarray, amplitude: float, frequency: float = 440.0) -> bool:
    expected = amplitude * np.sin(2 * np.pi * frequency * np.arange(len(samples)) / SAMPLING_RATE)
    middle = slice(400, -400)
    return float(np.max(np.abs(samples[middle] - expected[middle]))) < 2e-3


def test_user_folder_reads_pcm_wavs_and_transcripts(tmp_path: Path) -> None:
    _write_wav(tmp_path / "a.wav", _tone(16_000, 1.0), 16_000, 2)
    (tmp_path / "a.txt").write_text("Hello,\n  how are you?\n", encoding="utf-8")
    stereo = np.stack([_tone(44_100, 0.5), 0.5 * _tone(44_100, 0.5)], axis=1)
    _write_wav(tmp_path / "b.WAV", stereo, 44_100, 3)
    _write_wav(tmp_path / "c.wav", _tone(8_000, 0.5), 8_000, 1)
    _write_wav(tmp_path / "d.wav", _tone(48_000, 0.25), 48_000, 4)
    (tmp_path / "d.txt").write_text("", encoding="utf-8")
    _write_wav(tmp_path / "._a.wav", _tone(16_000, 0.1), 16_000, 2)  # macOS resource fork
    (tmp_path / "notes.md").write_text("not audio", encoding="utf-8")

    utterances = user_utterances(tmp_path)
    assert [u.name for u in utterances] == ["a.wav", "b.WAV", "c.wav", "d.wav"]
    a, b, c, d = utterances
    assert (a.text, a.has_transcript) == ("Hello, how are you?", True)
    assert (b.text, b.has_transcript) == ("", False)
    assert (d.text, d.has_transcript) == ("", True)
    assert [len(u.samples) for u in utterances] == [16_000, 8_000, 8_000, 4_000]
    for utterance in utterances:
        assert utterance.sampling_rate == SAMPLING_RATE
        assert utterance.samples.dtype == np.float32
        assert (utterance.voice, utterance.speed, utterance.noise_db) == ("", 0, None)
    assert _matches_tone(a.samples, 0.5)
    assert _matches_tone(b.samples, 0.375)  # the two channels averaged
    assert _matches_tone(d.samples, 0.5)
    # 8-bit PCM keeps about 0.004 of precision.
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8_000) / SAMPLING_RATE)
    assert float(np.max(np.abs(c.samples[400:-400] - expected[400:-400]))) < 0.01


def _float_wav(path: Path) -> None:
    data = np.zeros(1600, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16_000, 64_000, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_user_folder_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(folder: Path, match: str) -> None:
        with pytest.raises(BadInputError, match=match) as caught:
            user_utterances(folder)
        assert "\n" not in str(caught.value)

    refused(tmp_path / "missing", "not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, r"no WAV recordings \(\*\.wav\)")
    (empty / "a.txt").write_text("a transcript without its recording", encoding="utf-8")
    refused(empty, "no WAV recordings")

    cases: dict[str, tuple[str, str]] = {}

    def case(name: str, match: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        cases[name] = (str(folder), match)
        return folder

    (case("garbage", "not a WAV file") / "a.wav").write_bytes(b"not a wav file at all")
    _float_wav(case("float", "floating-point WAV is not read; convert it: ffmpeg") / "a.wav")
    (case("mp3", "only WAV recordings are read; convert it: ffmpeg") / "a.mp3").write_bytes(b"")
    _write_wav(case("slow", "8000 to 384000 Hz") / "a.wav", _tone(4_000, 0.5), 4_000, 2)
    _write_wav(case("silent", "holds no audio") / "a.wav", np.zeros(0), 16_000, 2)
    folder = case("transcript", "must be UTF-8")
    _write_wav(folder / "a.wav", _tone(16_000, 0.1), 16_000, 2)
    (folder / "a.txt").write_bytes(b"\xff\xfe\x00bad")
    for folder_name, match in cases.values():
        refused(Path(folder_name), match)

    long = case("long", "")
    _write_wav(long / "a.wav", _tone(8_000, 2.5), 8_000, 1)
    _write_wav(long / "b.wav", _tone(8_000, 1.5), 8_000, 1)
    monkeypatch.setattr(speech_samples, "MAX_USER_SECONDS", 2)
    refused(long, r"a\.wav: 2\.5 s long; recordings of at most 2 s are read")
    monkeypatch.setattr(speech_samples, "MAX_USER_SECONDS", 3)
    monkeypatch.setattr(speech_samples, "MAX_TOTAL_USER_SECONDS", 3)
    refused(long, r"4 s of recordings; at most 3 s in all are read")
