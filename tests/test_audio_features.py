"""The device-side audio code: WAV reading, resampling and Whisper's log-mel features.

`whisper_features` is held to transformers' WhisperFeatureExtractor on both of its paths:
the numpy one (taken without torch, which `whisper_features` mirrors call for call) and the
torch.stft one (taken on the build host, where torch is installed). No recordings ship with
the tests, so the signal is a deterministic speech-like mixture: a voiced source with a
wandering pitch shaped by moving formants, syllable-rate amplitude modulation, noise
bursts like fricatives, a chirp sweeping the band, and stretches of exact silence (which
reach the 1e-10 floor and the 80 dB clamp).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import wave
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from edgeport.runners.ondevice import (
    AudioError,
    load_audio,
    read_wav,
    resample,
    slaney_mel_filters,
    whisper_features,
    whisper_windows,
)

transformers = pytest.importorskip("transformers")
extraction = pytest.importorskip("transformers.models.whisper.feature_extraction_whisper")
audio_utils = pytest.importorskip("transformers.audio_utils")

RATE = 16000
# The extractor's paths may differ from ours by this much (measured: 0 on its numpy path,
# up to 5.4e-5 on its torch path).
TOLERANCE = 1e-4
PCM_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


# --------------------------------------------------------------------------- signals


@cache
def speech_like(seconds: float, rate: int = RATE) -> np.ndarray:
    """A deterministic float32 signal with the spectral and temporal texture of speech."""
    rng = np.random.default_rng(14)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    f0 = 130 + 35 * np.sin(2 * np.pi * 0.6 * t) + 15 * np.sin(2 * np.pi * 2.3 * t + 1)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    formants = [
        (600 + 200 * np.sin(2 * np.pi * 0.9 * t), 120.0),
        (1700 + 300 * np.sin(2 * np.pi * 1.3 * t + 2), 180.0),
        (2600 + 150 * np.sin(2 * np.pi * 0.4 * t), 250.0),
    ]
    voiced = np.zeros(n)
    for k in range(1, 48):
        harmonic = k * f0
        gain = sum(np.exp(-0.5 * ((harmonic - c) / w) ** 2) for c, w in formants) + 0.02 / k
        voiced += np.where(harmonic < 7800, gain, 0.0) * np.sin(k * phase)
    syllables = (0.5 - 0.5 * np.cos(2 * np.pi * 3.5 * t)) ** 2
    noise = np.diff(rng.standard_normal(n + 1))  # tilted up, like a fricative
    bursts = (np.sin(2 * np.pi * 0.8 * t + 0.5) > 0.7).astype(float)
    sweep = (t % 2.0) / 2.0  # a 200 Hz → 7 kHz chirp every two seconds
    chirp = np.sin(2 * np.pi * (200 * sweep + 6800 * sweep**2 / 2) * 2.0)
    x = voiced * syllables + 0.3 * noise * bursts + 0.05 * chirp
    x[(t % 3.0) > 2.6] = 0.0  # 0.4 s of exact silence every 3 s
    return np.asarray(0.7 * x / np.abs(x).max(), np.float32)


def sine(frequency: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * frequency * np.arange(round(rate * seconds)) / rate)


# --------------------------------------------------------------------------- WAV files


def pcm_bytes(values: np.ndarray, width: int) -> bytes:
    """Signed integer samples as little-endian PCM of `width` bytes (8-bit is unsigned)."""
    if width == 1:
        return (values + 128).astype(np.uint8).tobytes()
    if width == 3:
        return (values.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]).tobytes()
    return values.astype(f"<i{width}").tobytes()


def random_pcm(width: int, frames: int, channels: int, seed: int = 0) -> np.ndarray:
    """(frames, channels) signed integers covering the full range, extremes included."""
    full = 2 ** (8 * width - 1)
    values = np.random.default_rng(seed).integers(-full, full, (frames, channels))
    values[0, :], values[1, :] = -full, full - 1
    return values


def expected(values: np.ndarray, width: int) -> np.ndarray:
    return np.asarray(values.astype(np.float64).mean(axis=1) / 2 ** (8 * width - 1), np.float32)


def write_pcm(path: Path, values: np.ndarray, width: int, rate: int) -> Path:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(values.shape[1])
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(pcm_bytes(values.reshape(-1), width))
    return path


def chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def riff(
    path: Path,
    tag: int,
    channels: int,
    rate: int,
    bits: int,
    data: bytes,
    subformat: int | None = None,
    extra: bytes = b"",
) -> Path:
    """A WAV written by hand: a plain or (with `subformat`) an extensible format chunk,
    then `extra` chunks, then the data chunk."""
    align = channels * ((bits + 7) // 8)
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    if subformat is not None:
        mask = (1 << channels) - 1
        fmt += struct.pack("<HHI", 22, bits, mask) + struct.pack("<H", subformat) + PCM_GUID_TAIL
    body = b"WAVE" + chunk(b"fmt ", fmt) + extra + chunk(b"data", data)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_wav_pcm(tmp_path: Path, width: int, channels: int, rate: int) -> None:
    values = random_pcm(width, rate // 4, channels)
    samples, read_rate = read_wav(write_pcm(tmp_path / "a.wav", values, width, rate))
    assert read_rate == rate
    assert samples.dtype == np.float32 and samples.shape == (rate // 4,)
    np.testing.assert_array_equal(samples, expected(values, width))
    assert samples.min() >= -1.0 and samples.max() <= 1.0  # 32-bit full scale rounds to 1
    if channels == 1:  # full scale both ways
        assert samples[0] == -1.0 and samples[1] == np.float32(1 - 2.0 ** (1 - 8 * width))


def test_read_wav_averages_opposite_channels_to_silence(tmp_path: Path) -> None:
    left = np.round(sine(440, 8000) * 20000).astype(np.int64)
    samples, _ = read_wav(write_pcm(tmp_path / "a.wav", np.stack([left, -left], 1), 2, 8000))
    assert not samples.any()


@pytest.mark.parametrize(("width", "channels"), [(2, 1), (3, 2), (4, 2)])
def test_read_wav_extensible_pcm(tmp_path: Path, width: int, channels: int) -> None:
    """PCM in a WAVE_FORMAT_EXTENSIBLE header, with an odd-sized chunk before the data
    (its pad byte must be skipped): what many recorders write, and what `wave` refuses
    before Python 3.12."""
    values = random_pcm(width, 4410, channels, seed=width)
    extra = chunk(b"LIST", b"INFOISFT\x05\0\0\0edge\0")  # 17 bytes, padded to 18
    path = riff(
        tmp_path / "ext.wav",
        0xFFFE,
        channels,
        44100,
        8 * width,
        pcm_bytes(values.reshape(-1), width),
        subformat=1,
        extra=extra,
    )
    samples, rate = read_wav(path)
    assert rate == 44100
    np.testing.assert_array_equal(samples, expected(values, width))


def refusal(path: Path) -> str:
    with pytest.raises(AudioError) as caught:
        read_wav(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path))
    assert isinstance(caught.value, ValueError)
    return message


def test_read_wav_refuses_what_is_not_pcm_wav(tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("these are not samples\n" * 10)
    assert "not a WAV file" in refusal(text)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert "not a WAV file" in refusal(empty)

    floats = np.float32(sine(440, 16000, 0.1)).tobytes()
    message = refusal(riff(tmp_path / "float.wav", 3, 1, 16000, 32, floats))
    assert "IEEE float" in message and "0x0003" in message and "PCM" in message
    ext_float = riff(tmp_path / "ext-float.wav", 0xFFFE, 1, 16000, 32, floats, subformat=3)
    assert "IEEE float" in refusal(ext_float)
    alaw = riff(tmp_path / "alaw.wav", 6, 1, 8000, 8, bytes(800))
    assert "A-law" in refusal(alaw)
    odd = riff(tmp_path / "odd.wav", 0x1234, 1, 8000, 16, bytes(800))
    assert "format 0x1234" in refusal(odd)
    guid = bytearray(
        riff(tmp_path / "guid.wav", 0xFFFE, 1, 8000, 16, bytes(800), subformat=1).read_bytes()
    )
    guid[50] ^= 0xFF  # inside the SubFormat GUID's tail
    (tmp_path / "guid.wav").write_bytes(bytes(guid))
    assert "sub-format" in refusal(tmp_path / "guid.wav")


def test_read_wav_refuses_empty_and_truncated_files(tmp_path: Path) -> None:
    silent = write_pcm(tmp_path / "none.wav", np.zeros((0, 1), np.int64), 2, 16000)
    assert "no samples" in refusal(silent)

    whole = write_pcm(tmp_path / "whole.wav", random_pcm(2, 1000, 2), 2, 16000).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[:-1000])
    assert "truncated" in refusal(cut)
    cut.write_bytes(whole[:30])  # inside the format chunk
    refusal(cut)

    ext = riff(tmp_path / "ext.wav", 0xFFFE, 2, 16000, 24, bytes(6000), subformat=1)
    ext.write_bytes(ext.read_bytes()[:-600])
    assert "truncated" in refusal(ext)


def test_read_wav_refuses_64_bit_pcm(tmp_path: Path) -> None:
    path = riff(tmp_path / "wide.wav", 0xFFFE, 1, 16000, 64, bytes(800), subformat=1)
    assert "64-bit PCM" in refusal(path)


# --------------------------------------------------------------------------- resampling


def tone(y: np.ndarray, rate: int) -> tuple[float, float]:
    """(frequency, amplitude) of a sine, measured away from the edges: the frequency from
    interpolated rising zero crossings, the amplitude from the RMS over whole periods."""
    y = y.astype(np.float64)[len(y) // 8 : -len(y) // 8]
    rising = np.flatnonzero((y[:-1] < 0) & (y[1:] >= 0))
    crossings = rising + y[rising] / (y[rising] - y[rising + 1])
    frequency = rate * (len(crossings) - 1) / (crossings[-1] - crossings[0])
    whole = y[int(np.ceil(crossings[0])) : int(np.ceil(crossings[-1]))]
    return frequency, float(np.sqrt(2 * np.mean(whole**2)))


def level_db(y: np.ndarray) -> float:
    y = y.astype(np.float64)[len(y) // 8 : -len(y) // 8]
    return float(20 * np.log10(np.sqrt(2 * np.mean(y**2)) + 1e-30))


@pytest.mark.parametrize("source", [44100, 48000, 22050, 8000, 11025])
def test_resample_keeps_a_tone(source: int) -> None:
    out = resample(0.5 * sine(1000, source), source, RATE)
    assert out.dtype == np.float32 and len(out) == -(-source * RATE // source)
    frequency, amplitude = tone(out, RATE)
    assert frequency == pytest.approx(1000, rel=1e-3)
    assert amplitude == pytest.approx(0.5, rel=0.01)


def test_resample_keeps_the_speech_band_flat() -> None:
    for frequency in (100, 3000, 6000, 7000):
        _, amplitude = tone(resample(sine(frequency, 44100), 44100, RATE), RATE)
        assert amplitude == pytest.approx(1.0, abs=0.01), frequency


@pytest.mark.parametrize("source", [44100, 48000])
@pytest.mark.parametrize("frequency", [8500, 10000, 15000])
def test_resample_suppresses_what_would_alias(source: int, frequency: int) -> None:
    """Above the 8 kHz Nyquist frequency a tone must vanish, not fold into the speech band
    (10 kHz would land on 6 kHz). Measured: -100 dB or below."""
    assert level_db(resample(sine(frequency, source), source, RATE)) < -60


def test_resample_edges_and_identity() -> None:
    x = speech_like(1.0)
    np.testing.assert_array_equal(resample(x, RATE, RATE), x)
    assert resample(np.zeros(0), 44100, RATE).shape == (0,)
    assert resample(np.ones(3), 44100, RATE).shape == (2,)
    dc = resample(np.full(44100, 0.25), 44100, RATE)
    np.testing.assert_allclose(dc[100:-100], 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match="mono"):
        resample(np.zeros((2, 100)), 44100, RATE)
    with pytest.raises(ValueError, match="positive integers"):
        resample(x, 0, RATE)


def test_load_audio_reads_and_resamples(tmp_path: Path) -> None:
    values = np.round(0.5 * sine(1000, 44100) * 32767).astype(np.int64)[:, None]
    samples = load_audio(write_pcm(tmp_path / "tone.wav", values, 2, 44100), RATE)
    frequency, amplitude = tone(samples, RATE)
    assert len(samples) == RATE
    assert frequency == pytest.approx(1000, rel=1e-3) and amplitude == pytest.approx(0.5, 0.01)


# --------------------------------------------------------------------------- features


def extractor(feature_size: int, **settings: Any) -> tuple[Any, dict[str, Any]]:
    """The extractor, and its settings as preprocessor_config.json stores them."""
    made = transformers.WhisperFeatureExtractor(feature_size=feature_size, **settings)
    return made, json.loads(made.to_json_string())


def reference(made: Any, samples: np.ndarray, numpy_path: bool) -> np.ndarray:
    def call() -> np.ndarray:
        features = made(samples, sampling_rate=made.sampling_rate, return_tensors="np")
        return np.asarray(features.input_features)

    if not numpy_path:
        return call()
    with mock.patch.object(extraction, "is_torch_available", lambda: False):
        return call()


@pytest.mark.parametrize("feature_size", [80, 128])
def test_mel_filters_are_transformers(feature_size: int) -> None:
    for rate in (16000, 24000):
        theirs = audio_utils.mel_filter_bank(
            num_frequency_bins=201,
            num_mel_filters=feature_size,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=rate,
            norm="slaney",
            mel_scale="slaney",
        )
        np.testing.assert_array_equal(slaney_mel_filters(201, feature_size, rate), theirs)


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy-path", "torch-path"])
@pytest.mark.parametrize("seconds", [1.0, 7.3, 30.0])
@pytest.mark.parametrize("feature_size", [80, 128])
def test_whisper_features_match_the_extractor(
    feature_size: int, seconds: float, numpy_path: bool
) -> None:
    made, config = extractor(feature_size)
    samples = speech_like(seconds)
    ours = whisper_features(samples, config)
    assert ours.dtype == np.float32 and ours.shape == (1, feature_size, 3000)
    theirs = reference(made, samples, numpy_path)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= TOLERANCE


@pytest.mark.parametrize("feature_size", [80, 128])
def test_whisper_windows_cut_long_audio(feature_size: int) -> None:
    """31 s: a full 30 s window and a 1 s one, each as the extractor computes it; given the
    whole 31 s, both the extractor and whisper_features keep the first 30 s."""
    made, config = extractor(feature_size)
    samples = speech_like(31.0)
    windows = whisper_windows(samples, config)
    assert [len(w) for w in windows] == [480000, 16000]
    np.testing.assert_array_equal(np.concatenate(windows), samples)
    for window in windows:
        for numpy_path in (True, False):
            theirs = reference(made, window, numpy_path)
            assert np.abs(whisper_features(window, config) - theirs).max() <= TOLERANCE
    np.testing.assert_array_equal(
        whisper_features(samples, config), whisper_features(windows[0], config)
    )
    assert np.abs(whisper_features(samples, config) - reference(made, samples, True)).max() == 0
    assert len(whisper_windows(np.zeros(0, np.float32), config)) == 1
    assert len(whisper_windows(np.zeros(960000, np.float32), config)) == 2


@pytest.mark.parametrize(
    "settings",
    [
        {"padding_side": "left"},
        {"padding_value": 0.01},
        {"chunk_length": 10, "hop_length": 200, "n_fft": 512},
    ],
    ids=["left-padding", "padding-value", "other-geometry"],
)
def test_whisper_features_follow_the_config(settings: dict[str, Any]) -> None:
    made, config = extractor(80, **settings)
    samples = speech_like(7.3)
    ours = whisper_features(samples, config)
    assert ours.shape == (1, 80, made.nb_max_frames)
    assert np.abs(ours - reference(made, samples, True)).max() <= TOLERANCE


def test_whisper_features_config_defaults_and_refusals() -> None:
    made, _ = extractor(80)
    samples = speech_like(1.0)
    assert np.abs(whisper_features(samples, {}) - reference(made, samples, True)).max() == 0
    # n_samples and nb_max_frames are derived, as the extractor derives them.
    stale = {"n_samples": 1, "nb_max_frames": 1, "mel_filters": [[0.0]]}
    np.testing.assert_array_equal(whisper_features(samples, stale), whisper_features(samples, {}))
    for bad in ({"feature_size": 0}, {"hop_length": "160"}, {"n_fft": True}):
        with pytest.raises(ValueError, match="positive integer"):
            whisper_features(samples, bad)
    with pytest.raises(ValueError, match="padding_side"):
        whisper_features(samples, {"padding_side": "middle"})
    with pytest.raises(ValueError, match="mono"):
        whisper_features(np.zeros((2, 100)), {})


def test_resampled_speech_keeps_its_features() -> None:
    """A 16 kHz recording taken to 44.1 kHz and back gives nearly the same features: the
    resampler loses only what lies above ~7.5 kHz, Whisper's top mel bands."""
    samples = speech_like(7.3)
    again = resample(resample(samples, RATE, 44100), 44100, RATE)
    assert len(again) == len(samples)
    difference = np.abs(whisper_features(again, {}) - whisper_features(samples, {}))[0]
    # Measured: at most 0.02 up to band 76 of 80 (a fraction of a dB), 0.5 in the top band.
    assert difference[:76].max() < 0.05
    assert difference.mean() < 0.002


def test_whisper_features_on_synthesized_speech(tmp_path: Path) -> None:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("apt-get install espeak-ng")
    path = tmp_path / "speech.wav"
    sentence = "The quick brown fox jumps over the lazy dog, then naps in the sun."
    subprocess.run([espeak, "-w", str(path), sentence], check=True, capture_output=True)
    made, config = extractor(80)
    samples = load_audio(path, RATE)
    assert np.abs(samples).max() > 0.05  # speech, not silence
    ours = whisper_features(samples, config)
    for numpy_path in (True, False):
        assert np.abs(ours - reference(made, samples, numpy_path)).max() <= TOLERANCE
