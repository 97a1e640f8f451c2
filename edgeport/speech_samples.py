"""Realistic speech for calibrating and validating speech models, with no download.

No recordings ship with any package edgeport depends on, so the built-in speech is
synthesised on this machine by espeak-ng (a Debian package: ``apt-get install
espeak-ng``) from edgeport's own English sentences, the ones text models calibrate and
validate on (``edgeport/data/calibration_sentences.txt`` and
``validation_sentences.txt``). Those two files share no sentence, so calibration and
validation speech share no text; babble noise is made from other sentences of the same
split, so no validation sentence is heard, even as background, while calibrating.

Only sentences a person would say aloud are kept (see `suited_to_speech`): the files also
hold log lines, code, prices and six other languages, which test tokenizers but would
make a poor or ambiguous transcript.

Variety comes from a fixed plan: utterance k of a split takes its sentence, voice, speed,
pitch and noise condition from cycles of coprime lengths (see `builtin_utterances`), so
any 8 or more utterances hold several voices, speeds, pitches, noise types and
signal-to-noise ratios. Utterance k depends only on (split, k): asking for more leaves
the ones already drawn unchanged.

Everything is deterministic: espeak-ng gives the same samples for the same text and
settings (one espeak-ng release), the resampler is plain numpy arithmetic, and noise
comes from numpy Generators seeded with (split, k), whose bit streams NumPy keeps stable.

The user's recordings (`user_utterances`) are WAV files read with the standard library's
`wave` module, with an optional transcript beside each.
"""

from __future__ import annotations

import functools
import io
import math
import re
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from edgeport.errors import BadInputError, UnsupportedError

if TYPE_CHECKING:
    import numpy.typing as npt

    Audio = npt.NDArray[np.float32]

Split = Literal["calibration", "validation"]
NoiseType = Literal["white", "pink", "brown", "babble", "hum"]

# What speech models take: Whisper, wav2vec2, HuBERT and their kin all read 16 kHz mono.
SAMPLING_RATE = 16_000
DEFAULT_COUNTS: dict[str, int] = {"calibration": 16, "validation": 32}
ESPEAK = "espeak-ng"
INSTALL_HINT = "apt-get install espeak-ng"

# espeak-ng's own voices (not the MBROLA ones, which need separate packages): US, British,
# Received Pronunciation, Scottish and Caribbean accents, its female (+f) and male (+m)
# variants, and its Klatt formant synthesiser, which sounds unlike the default one.
# Seven, a length coprime with the other cycles, so voices do not pair with one speed.
VOICES: tuple[str, ...] = (
    "en-us",
    "en-gb+f3",
    "en-us+klatt",
    "en-gb-x-rp+m3",
    "en-us+f3",
    "en-gb-scotland+f2",
    "en-029+m1",
)
# Words per minute: slow and careful, about conversational, and hurried (espeak's default
# is 175). Pitch is espeak's 0–99 scale, 50 its default.
SPEEDS: tuple[int, ...] = (130, 160, 190)
PITCHES: tuple[int, ...] = (30, 50, 70)
# One utterance in four is clean (None); the rest have noise at these signal-to-noise
# ratios: a quiet room, a busy one, and barely intelligible to a person.
SNRS_DB: tuple[float | None, ...] = (None, 20.0, 10.0, 5.0)
NOISES: tuple[NoiseType, ...] = ("white", "pink", "brown", "babble", "hum")
BABBLE_TALKERS = 4

# Clean speech is scaled to this active level (-20 dBFS), leaving room for noise and
# peaks; a mixture that would still clip is scaled down as a whole, keeping its SNR.
SPEECH_LEVEL = 0.1
MAX_PEAK = 0.99
# A frame is "active" speech when its energy is within this many dB of the loudest
# frame's: espeak's pauses are digital silence, and a recording's room tone is far below.
ACTIVE_RANGE_DB = 40.0
ACTIVE_FRAME_SECONDS = 0.02

# Sentences suited to speech (`suited_to_speech`).
MIN_WORDS = 3
# At the slowest speed (130 words a minute) 40 words take about 20 s, inside Whisper's
# 30-second window with room for espeak's pauses.
MAX_WORDS = 40
# A word of letters, with inner apostrophes or hyphens ("won't", "faster-than-light"),
# an optional final apostrophe ("days'") and one trailing punctuation mark.
_WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*'?[.,;:?!]?")
# The hundred commonest English words (Oxford English Corpus) and the forms of "be",
# "have" and "do": an English sentence of three words or more nearly always has one, and
# a sentence in another language written in plain ASCII letters ("Das Museum ist
# montags geschlossen.") rarely does.
_COMMON_WORDS = (
    "the be to of and a in that have i it for not on with he as you do at this but his by "
    "from they we say her she or an will my one all would there their what so up out if "
    "about who get which go me when make can like time no just him know take people into "
    "year your good some could them see other than then now look only come its over think "
    "also back after use two how our work first well way even new want because any these "
    "give day most us is are was were am been being has had having does did done"
)
COMMON_ENGLISH = frozenset(_COMMON_WORDS.split())

# A user's recording: at most 10 minutes each (a long meeting is not a calibration
# sample, and 10 minutes at 16 kHz is already 38 MB of float32), an hour in all.
MAX_USER_SECONDS = 600
MAX_TOTAL_USER_SECONDS = 3600
MIN_USER_RATE = 8_000  # telephone speech; below it there is too little left of a voice
MAX_USER_RATE = 384_000
MAX_TRANSCRIPT_BYTES = 1_000_000
OTHER_AUDIO_SUFFIXES = (".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff")

# The resampler (`_resample`): a Kaiser window with β = 8.6 (about 85 dB of stop-band
# attenuation) over 32 zero crossings each side of a sinc cut off at 94 % of Nyquist.
KAISER_BETA = 8.6
RESAMPLE_ZEROS = 32
RESAMPLE_CUTOFF = 0.94

# Seconds one espeak-ng run may take: a sentence takes about 25 ms.
ESPEAK_TIMEOUT = 60

_SPLIT_SEED = {"calibration": 1, "validation": 2}


@dataclass(frozen=True, eq=False)
class Utterance:
    """One mono utterance at `sampling_rate` (16 kHz), samples in [-1, 1].

    For a built-in utterance `text` is exactly what espeak-ng was asked to say; `voice`,
    `speed` (words per minute) and `pitch` (0–99) are its espeak-ng settings, `noise_db`
    the signal-to-noise ratio of the added `noise` (both None when clean). For a user's
    recording `voice` is "", `speed` and `pitch` are 0, `noise_db` and `noise` are None,
    and `text` is its transcript, or "" with `has_transcript` False when there is none.
    `name` describes the utterance for reports.
    """

    samples: Audio
    sampling_rate: int
    text: str
    voice: str
    speed: int
    pitch: int
    noise_db: float | None
    name: str
    has_transcript: bool = True
    noise: NoiseType | None = None

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sampling_rate


@dataclass(frozen=True)
class _Plan:
    split: Split
    index: int
    text: str
    voice: str
    speed: int
    pitch: int
    snr_db: float | None
    noise: NoiseType | None


def espeak_available() -> bool:
    """True when the espeak-ng command is on PATH."""
    return shutil.which(ESPEAK) is not None


def _require_espeak() -> str:
    path = shutil.which(ESPEAK)
    if path is None:
        raise UnsupportedError(
            f"the built-in speech is synthesised by espeak-ng, which is not installed: "
            f"{INSTALL_HINT} (or give a folder of WAV recordings)"
        )
    return path


# --------------------------------------------------------------------------- sentences


def suited_to_speech(sentence: str) -> bool:
    """Whether a sentence makes a good spoken utterance with an unambiguous transcript.

    The rule: MIN_WORDS (3) to MAX_WORDS (40) words separated by spaces; every word made
    of ASCII letters, with only inner apostrophes or hyphens, a final apostrophe and one
    trailing punctuation mark (. , ; : ? !); at least 3 different words; and at least one
    of the commonest English words (COMMON_ENGLISH).

    That drops fragments ("hello", "Tokyo, Japan"), code, logs, URLs and e-mail
    addresses (digits, symbols, dots inside words), repeated junk ("The the the the
    the"), other languages (accented or non-Latin letters, or no common English word)
    and numbers: a spoken "4" is rightly transcribed "4" or "four", so a word error rate
    would count a correct transcription as wrong.
    """
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if not all(_WORD.fullmatch(word) for word in words):
        return False
    bare = {word.rstrip(".,;:?!").strip("'").lower() for word in words}
    return len(bare) >= MIN_WORDS and not bare.isdisjoint(COMMON_ENGLISH)


@functools.cache
def speech_sentences(split: Split) -> tuple[str, ...]:
    """The sentences of edgeport's `split` text file that are `suited_to_speech`."""
    from edgeport.samples import DATA_DIR

    lines = (DATA_DIR / f"{split}_sentences.txt").read_text(encoding="utf-8").splitlines()
    sentences = tuple(dict.fromkeys(line.strip() for line in lines if suited_to_speech(line)))
    if not sentences:
        raise UnsupportedError(f"{DATA_DIR}: no {split} sentence is suited to speech")
    return sentences


# --------------------------------------------------------------------------- synthesis


def _check_rate(rate: int) -> None:
    if not isinstance(rate, int) or rate <= 0:
        raise ValueError(f"a sampling rate is a positive integer, not {rate!r}")


@functools.cache
def _espeak(text: str, voice: str, speed: int, pitch: int) -> tuple[Audio, int]:
    """espeak-ng's own output (22050 Hz for its voices) as float32, kept for the process
    and read-only: a sentence costs about 25 ms, and babble reuses other utterances."""
    command = [_require_espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch)]
    # The text goes through stdin: as an argument, one starting with "-" would be an option.
    try:
        result = subprocess.run(
            [*command, "--stdin", "--stdout"],
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=ESPEAK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise UnsupportedError(f"espeak-ng took over {ESPEAK_TIMEOUT} s for {text!r}") from exc
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = message[0] if message else f"exit status {result.returncode}"
        raise UnsupportedError(f"espeak-ng -v {voice} failed: {detail}")
    # With --stdout espeak-ng cannot seek back, so the WAV header's sizes are placeholders;
    # `wave` reads the frames that are there.
    try:
        with wave.open(io.BytesIO(result.stdout), "rb") as reader:
            rate = reader.getframerate()
            width = reader.getsampwidth()
            channels = reader.getnchannels()
            data = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as exc:
        raise UnsupportedError(f"espeak-ng -v {voice} wrote no WAV audio ({exc})") from exc
    samples = _pcm_to_float(data, width, channels)
    samples.flags.writeable = False
    return samples, rate


@functools.cache
def _synthesised(text: str, voice: str, speed: int, pitch: int, rate: int) -> Audio:
    samples, native = _espeak(text, voice, speed, pitch)
    resampled = _resample(samples, native, rate)
    resampled.flags.writeable = False
    return resampled


def synthesise(text: str, voice: str, speed: int, pitch: int, rate: int = SAMPLING_RATE) -> Audio:
    """`text` spoken by espeak-ng with `voice` (``espeak-ng --voices=en`` lists them; a
    variant is added as ``en-us+f3``), `speed` in words per minute (80–450) and `pitch`
    (0–99), as float32 mono samples at `rate` Hz in [-1, 1], at espeak-ng's own level.

    Raises UnsupportedError when espeak-ng is missing or rejects the voice.
    """
    if not text.strip():
        raise ValueError("nothing to say: the text is empty")
    if not 80 <= speed <= 450:
        raise ValueError(f"espeak-ng speaks 80 to 450 words per minute, not {speed}")
    if not 0 <= pitch <= 99:
        raise ValueError(f"espeak-ng's pitch is 0 to 99, not {pitch}")
    _check_rate(rate)
    # A copy: the cached samples are shared and read-only.
    return _synthesised(text, voice, speed, pitch, rate).copy()


# --------------------------------------------------------------------------- resampling


@functools.cache
def _polyphase_table(up: int, down: int) -> tuple[npt.NDArray[np.float64], int]:
    """The resampler's filter: one row of taps for each of the `up` fractional positions
    an output sample can take between input samples, and its half-width in input samples.
    """
    cutoff = RESAMPLE_CUTOFF * min(1.0, up / down)  # in units of the input's Nyquist
    half = math.ceil(RESAMPLE_ZEROS / cutoff)
    offsets = np.arange(-half + 1, half + 1, dtype=np.float64)  # input samples from floor(t)
    fractions = np.arange(up, dtype=np.float64)[:, None] / up
    distance = offsets[None, :] - fractions
    # The Kaiser window's closed form, evaluated at these fractional distances.
    inside = np.clip(1.0 - (distance / half) ** 2, 0.0, None)
    window = np.i0(KAISER_BETA * np.sqrt(inside)) / np.i0(KAISER_BETA)
    taps = cutoff * np.sinc(cutoff * distance) * window
    # Each row sums to 1: a constant signal stays constant whatever the output's phase.
    taps /= taps.sum(axis=1, keepdims=True)
    return taps, half


def _resample(samples: Audio, rate_in: int, rate_out: int) -> Audio:
    """Band-limited resampling by a rational factor: a polyphase windowed-sinc filter.

    Output sample n lies at input time t = n·rate_in/rate_out and is a weighted sum of the
    input samples within RESAMPLE_ZEROS (32) zero crossings of a Kaiser-windowed sinc
    whose cut-off is 94 % of the lower Nyquist frequency. From 22.05, 44.1 or 48 kHz to
    16 kHz: flat within 0.05 dB to 7 kHz, -3 dB at 7.4 kHz, 85 dB down from 8.2 kHz.

    With the ratio reduced to up/down (320/441 for 22050 → 16000 Hz) the outputs n, n+up,
    n+2·up... share one row of taps and step `down` input samples apart, so each of the
    `up` rows is one strided matrix-vector product: 10 minutes at 48 kHz take seconds.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    if rate_in == rate_out or samples.size == 0:
        return np.array(samples, dtype=np.float32)
    common = math.gcd(rate_in, rate_out)
    up, down = rate_out // common, rate_in // common
    taps, half = _polyphase_table(up, down)
    zeros = np.zeros(half + down + 1)
    padded = np.concatenate([zeros[:half], samples.astype(np.float64), zeros])
    # Row i holds the 2·half input samples from i - half + 1 to i + half.
    windows = sliding_window_view(padded, 2 * half)
    count = -(-len(samples) * up // down)  # ceil
    output = np.empty(count, dtype=np.float64)
    for first in range(min(up, count)):
        base, phase = divmod(first * down, up)
        number = len(range(first, count, up))
        rows = windows[base + 1 : base + 1 + down * number : down]
        output[first::up] = rows @ taps[phase]
    return output.astype(np.float32)


# --------------------------------------------------------------------------- noise


def active_rms(samples: Audio, rate: int = SAMPLING_RATE) -> float:
    """The RMS of the active frames: those (20 ms) within ACTIVE_RANGE_DB (40 dB) of the
    loudest. Pauses would otherwise lower a sentence's level by how long it pauses, and
    an SNR against it would depend on the speaker's rhythm."""
    frame = max(1, round(rate * ACTIVE_FRAME_SECONDS))
    values = np.asarray(samples, dtype=np.float64)
    usable = len(values) // frame * frame
    if usable == 0:
        return float(np.sqrt(np.mean(values**2))) if values.size else 0.0
    energies = np.mean(values[:usable].reshape(-1, frame) ** 2, axis=1)
    loudest = float(energies.max())
    if loudest == 0.0:
        return 0.0
    active = energies[energies >= loudest * 10 ** (-ACTIVE_RANGE_DB / 10)]
    return float(np.sqrt(active.mean()))


def _rms(samples: npt.NDArray[np.float64]) -> float:
    return float(np.sqrt(np.mean(samples**2)))


def _coloured(rng: np.random.Generator, length: int, exponent: float) -> npt.NDArray[np.float64]:
    """Gaussian noise whose power falls as 1/f**exponent (1 pink, 2 brown), above 20 Hz:
    below it a loudspeaker or microphone passes nothing anyway."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    frequencies = np.fft.rfftfreq(length, 1 / SAMPLING_RATE)
    gain = np.zeros_like(frequencies)
    audible = frequencies >= 20.0
    gain[audible] = frequencies[audible] ** (-exponent / 2)
    return np.fft.irfft(spectrum * gain, n=length)


def _hum(rng: np.random.Generator, length: int) -> tuple[npt.NDArray[np.float64], int]:
    """Mains hum: 50 or 60 Hz and its harmonics up to the sixth, amplitude 1/h, each at
    a random phase, as a badly earthed microphone or amplifier picks up."""
    mains = 50 if rng.random() < 0.5 else 60
    time = np.arange(length) / SAMPLING_RATE
    hum = np.zeros(length)
    for harmonic in range(1, 7):
        phase = 2 * np.pi * rng.random()
        hum += np.sin(2 * np.pi * mains * harmonic * time + phase) / harmonic
    return hum, mains


def _babble(rng: np.random.Generator, plan: _Plan, length: int) -> npt.NDArray[np.float64]:
    """BABBLE_TALKERS other utterances of the same split (other sentences, other voices),
    each at the same active level, looped from a random offset and summed: a room of
    people talking. Only the split's own sentences, so the splits stay disjoint."""
    babble = np.zeros(length)
    for talker in range(1, BABBLE_TALKERS + 1):
        other = _plan(plan.split, plan.index + talker)
        voice = _synthesised(other.text, other.voice, other.speed, other.pitch, SAMPLING_RATE)
        level = active_rms(voice)
        if level == 0.0:
            continue
        looped = np.resize(voice.astype(np.float64) / level, length)
        babble += np.roll(looped, int(rng.integers(0, length)))
    return babble


def _noise(plan: _Plan, length: int) -> tuple[npt.NDArray[np.float64], str]:
    """The plan's noise, unscaled, and how a report names it."""
    rng = np.random.default_rng([_SPLIT_SEED[plan.split], plan.index])
    if plan.noise == "white":
        return rng.standard_normal(length), "white noise"
    if plan.noise == "pink":
        return _coloured(rng, length, 1.0), "pink noise"
    if plan.noise == "brown":
        return _coloured(rng, length, 2.0), "brown noise"
    if plan.noise == "babble":
        return _babble(rng, plan, length), f"{BABBLE_TALKERS}-talker babble"
    hum, mains = _hum(rng, length)
    return hum, f"{mains} Hz mains hum"


def _mix(
    speech: npt.NDArray[np.float64], noise: npt.NDArray[np.float64], snr_db: float
) -> npt.NDArray[np.float64]:
    """`speech` plus `noise` scaled so that active_rms(speech) / rms(noise) is `snr_db`."""
    target = active_rms(speech.astype(np.float32)) / 10 ** (snr_db / 20)
    level = _rms(noise)
    if level == 0.0:
        return speech
    return speech + noise * (target / level)


# --------------------------------------------------------------------------- built-in


def _plan(split: Split, index: int) -> _Plan:
    """Utterance `index` of `split`: each setting cycles with its own period (7 voices,
    3 speeds, 3 pitches, 4 noise levels, 5 noise types), so settings do not pair up.

    Pitch advances one extra step every 3 utterances, so speed and pitch (both of
    period 3) run through all 9 pairs. Noise types are dealt to the noisy utterances
    only (three in four), in turn.
    """
    sentences = speech_sentences(split)
    snr = SNRS_DB[index % len(SNRS_DB)]
    noisy_before = index - (index + len(SNRS_DB) - 1) // len(SNRS_DB)  # noisy ones before
    return _Plan(
        split=split,
        index=index,
        text=sentences[index % len(sentences)],
        voice=VOICES[index % len(VOICES)],
        speed=SPEEDS[index % len(SPEEDS)],
        pitch=PITCHES[(index + index // len(SPEEDS)) % len(PITCHES)],
        snr_db=snr,
        noise=None if snr is None else NOISES[noisy_before % len(NOISES)],
    )


def _render(plan: _Plan) -> Utterance:
    clean = _synthesised(plan.text, plan.voice, plan.speed, plan.pitch, SAMPLING_RATE)
    level = active_rms(clean)
    speech = clean.astype(np.float64) * (SPEECH_LEVEL / level if level > 0 else 1.0)
    description = f"{plan.voice}, {plan.speed} wpm, pitch {plan.pitch}"
    if plan.snr_db is None:
        mixed, condition = speech, "clean"
    else:
        noise, noise_name = _noise(plan, len(speech))
        mixed = _mix(speech, noise, plan.snr_db)
        condition = f"{noise_name} at {plan.snr_db:g} dB SNR"
    peak = float(np.abs(mixed).max(initial=0.0))
    if peak > MAX_PEAK:
        mixed = mixed * (MAX_PEAK / peak)
    return Utterance(
        samples=mixed.astype(np.float32),
        sampling_rate=SAMPLING_RATE,
        text=plan.text,
        voice=plan.voice,
        speed=plan.speed,
        pitch=plan.pitch,
        noise_db=plan.snr_db,
        name=f"{plan.split} {plan.index}: {description}, {condition}",
        noise=plan.noise,
    )


def builtin_utterances(split: Split, count: int | None = None) -> list[Utterance]:
    """`count` synthesised English utterances for one split, 16 kHz float32 mono.

    Utterance k speaks sentence k (cycling through `speech_sentences(split)`) with voice
    k mod 7, speed k mod 3 and pitch (k + k div 3) mod 3; k mod 4 = 0 is clean and the
    others carry noise at 20, 10 and 5 dB SNR, of the types white, pink, brown, babble
    and hum in turn. Clean speech is scaled to an active level of -20 dBFS. So any 8
    utterances in a row use 7 voices, 3 speeds, 3 pitches, 4 noise levels and 5 noise types.

    `count` defaults to 16 for calibration and 32 for validation. Calibration and
    validation utterances speak different sentences (the two text files are disjoint).
    """
    if count is None:
        count = DEFAULT_COUNTS[split]
    if count < 0:
        raise ValueError(f"count must be at least 0, not {count}")
    if split not in _SPLIT_SEED:
        raise ValueError(f"split is 'calibration' or 'validation', not {split!r}")
    _require_espeak()
    return [_render(_plan(split, index)) for index in range(count)]


def describe_builtin() -> str:
    """One line for a report: what the built-in speech is made of."""
    calibration, validation = DEFAULT_COUNTS["calibration"], DEFAULT_COUNTS["validation"]
    levels = ", ".join(f"{snr:g}" for snr in SNRS_DB if snr is not None)
    return (
        f"{calibration + validation} English utterances ({calibration} calibration, "
        f"{validation} validation) synthesised by espeak-ng from "
        f"{len(speech_sentences('calibration'))} + {len(speech_sentences('validation'))} "
        f"of edgeport's sentences (disjoint), in {len(VOICES)} voices "
        f"({', '.join(VOICES)}), at {'/'.join(map(str, SPEEDS))} words per minute and "
        f"pitch {'/'.join(map(str, PITCHES))}; one in {len(SNRS_DB)} clean, the others "
        f"with {', '.join(NOISES)} noise at {levels} dB SNR; 16 kHz mono"
    )


# --------------------------------------------------------------------------- user files


def _pcm_to_float(data: bytes, width: int, channels: int) -> Audio:
    """Little-endian integer PCM (8-bit unsigned, 16/24/32-bit signed) as float32 in
    [-1, 1), channels averaged into one."""
    frames = len(data) // (width * channels)
    data = data[: frames * width * channels]
    if width == 1:
        values = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        values = np.frombuffer(data, "<i2").astype(np.float32) / 2.0**15
    elif width == 3:
        # Each 3-byte sample becomes the top of a 4-byte one: sign and scale come free.
        wide = np.zeros((len(data) // 3, 4), np.uint8)
        wide[:, 1:] = np.frombuffer(data, np.uint8).reshape(-1, 3)
        values = (wide.view("<i4").ravel().astype(np.float64) / 2.0**31).astype(np.float32)
    elif width == 4:
        values = (np.frombuffer(data, "<i4").astype(np.float64) / 2.0**31).astype(np.float32)
    else:
        raise ValueError(f"{width}-byte samples")
    if channels > 1:
        values = values.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(values, dtype=np.float32)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g} s" if seconds == int(seconds) else f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:g} minutes" if minutes == int(minutes) else f"{minutes:.1f} minutes"


@dataclass(frozen=True)
class _WavHeader:
    path: Path
    rate: int
    width: int
    channels: int
    frames: int


def _unsupported_wav(path: Path, exc: Exception) -> BadInputError:
    reason = str(exc)
    convert = f"convert it: ffmpeg -i {path.name} -ac 1 -ar 16000 -c:a pcm_s16le out.wav"
    if "unknown format: 3" in reason:
        return BadInputError(f"{path}: floating-point WAV is not read; {convert}")
    if "unknown format" in reason:
        return BadInputError(
            f"{path}: not integer PCM WAV ({reason}); 8/16/24/32-bit PCM is read; {convert}"
        )
    return BadInputError(f"{path}: not a WAV file Python's wave module can read ({reason})")


def _read_header(path: Path) -> _WavHeader:
    try:
        with wave.open(str(path), "rb") as reader:
            rate, width = reader.getframerate(), reader.getsampwidth()
            channels, frames = reader.getnchannels(), reader.getnframes()
    except (wave.Error, EOFError) as exc:
        raise _unsupported_wav(path, exc) from exc
    except OSError as exc:
        raise BadInputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if width not in (1, 2, 3, 4):
        raise BadInputError(f"{path}: {8 * width}-bit samples; 8/16/24/32-bit PCM is read")
    if channels < 1:
        raise BadInputError(f"{path}: no audio channels")
    if not MIN_USER_RATE <= rate <= MAX_USER_RATE:
        raise BadInputError(
            f"{path}: sampled at {rate} Hz; {MIN_USER_RATE} to {MAX_USER_RATE} Hz is read"
        )
    # A header written while streaming (espeak-ng --stdout, arecord to a pipe) claims
    # about 2**31 bytes: the file's size bounds what is really there.
    frames = min(frames, path.stat().st_size // (width * channels))
    if frames == 0:
        raise BadInputError(f"{path}: holds no audio")
    if frames > MAX_USER_SECONDS * rate:
        raise BadInputError(
            f"{path}: {_duration(frames / rate)} long; recordings of at most "
            f"{_duration(MAX_USER_SECONDS)} are read (cut it into shorter ones)"
        )
    return _WavHeader(path, rate, width, channels, frames)


def _read_wav(header: _WavHeader) -> Audio:
    try:
        with wave.open(str(header.path), "rb") as reader:
            data = reader.readframes(header.frames)
    except (wave.Error, EOFError) as exc:
        raise _unsupported_wav(header.path, exc) from exc
    except OSError as exc:
        raise BadInputError(f"{header.path}: cannot be read ({exc.strerror or exc})") from exc
    samples = _pcm_to_float(data, header.width, header.channels)
    if samples.size == 0:
        raise BadInputError(f"{header.path}: holds no audio")
    resampled = _resample(samples, header.rate, SAMPLING_RATE)
    # Band-limiting a full-scale recording can overshoot by a few per cent.
    return np.clip(resampled, -1.0, 1.0, out=resampled)


def _read_transcript(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_TRANSCRIPT_BYTES + 1)
    except OSError as exc:
        raise BadInputError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if len(raw) > MAX_TRANSCRIPT_BYTES:
        raise BadInputError(f"{path}: a transcript of over {MAX_TRANSCRIPT_BYTES // 1_000_000} MB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: a transcript must be UTF-8 text") from exc
    return " ".join(text.split())


def user_utterances(folder: Path) -> list[Utterance]:
    """The user's recordings: every *.wav directly in `folder` (suffix in any case),
    sorted by name, as 16 kHz float32 mono; hidden files are skipped.

    A transcript is the UTF-8 text file of the same name with the suffix .txt
    (``a.wav`` and ``a.txt``), its whitespace collapsed; without one `text` is "" and
    `has_transcript` False, which still serves calibration and comparing the converted
    model with the original. Integer PCM of 8, 16, 24 or 32 bits is read, any number of
    channels (averaged) at 8 to 384 kHz; each file at most 10 minutes, an hour in all.
    Other audio formats in the folder are refused rather than silently skipped.
    """
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder")
    entries = sorted(
        (p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file()),
        key=lambda p: p.name,
    )
    others = [p for p in entries if p.suffix.lower() in OTHER_AUDIO_SUFFIXES]
    if others:
        name = others[0].name
        raise BadInputError(
            f"{others[0]}: only WAV recordings are read; convert it: ffmpeg -i {name} "
            f"-ac 1 -ar 16000 -c:a pcm_s16le {Path(name).stem}.wav"
        )
    paths = [p for p in entries if p.suffix.lower() == ".wav"]
    if not paths:
        raise BadInputError(f"{folder}: no WAV recordings (*.wav)")
    # Every header first: a folder that is too long is refused before anything is decoded.
    headers = [_read_header(path) for path in paths]
    total = sum(header.frames / header.rate for header in headers)
    if total > MAX_TOTAL_USER_SECONDS:
        raise BadInputError(
            f"{folder}: {_duration(total)} of recordings; at most "
            f"{_duration(MAX_TOTAL_USER_SECONDS)} in all are read"
        )
    utterances = []
    for header in headers:
        transcript = _read_transcript(header.path.with_suffix(".txt"))
        utterances.append(
            Utterance(
                samples=_read_wav(header),
                sampling_rate=SAMPLING_RATE,
                text=transcript or "",
                voice="",
                speed=0,
                pitch=0,
                noise_db=None,
                name=header.path.name,
                has_transcript=transcript is not None,
            )
        )
    return utterances
