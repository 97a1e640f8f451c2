"""Train the tiny Whisper model of examples/speech/tiny-whisper/ from scratch, deterministically.

A real `WhisperForConditionalGeneration` (80 mel bins, the standard 30-second window of
3000 frames) small enough to commit, whose weights really learned to transcribe, for
testing the conversion of speech recognition models: the converted and quantised models
are judged by whether their greedy transcripts match the PyTorch model's, and random
weights give transcripts of noise that no comparison can judge. It is a test model of
conversion, not of speech recognition: it has heard every sentence it is validated on.

The speech is synthesised by espeak-ng (edgeport.speech_samples), so nothing is
downloaded. The training text is all of edgeport's sentences suited to speech, both the
calibration and the validation ones (`speech_sentences`), plus a few hundred short
everyday sentences written below (EXTRA_SENTENCES), which give the decoder more words
and phrasings than the 45 sentences alone. Each sentence is rendered several times in
espeak-ng's seven voices (edgeport's VOICES), at speeds and pitches that none of the
built-in utterances use (TRAIN_SPEEDS, TRAIN_PITCHES), a quarter of them clean and the
rest with white, pink or brown noise, mains hum or babble at 5 to 30 dB SNR, at a random
level and after a short random silence. So the model has heard every sentence of
`builtin_utterances("validation")`, but never those renderings of them: the word error
rate printed at the end is measured on exactly the 32 utterances the converter
validates on.

    python scripts/train_whisper_model.py examples/speech

writes examples/speech/tiny-whisper/: config.json, generation_config.json,
model.safetensors, preprocessor_config.json (a WhisperFeatureExtractor, the
"processor_class" WhisperProcessor) and the tokenizer (tokenizer.json, vocab.json,
merges.txt, tokenizer_config.json, special_tokens_map.json, added_tokens.json).

The tokenizer is a byte-level BPE, as Whisper's own (GPT-2's) is, trained here with the
`tokenizers` library on the training transcripts, each with Whisper's leading space
(" The cat sat on the mat."). Whisper's special tokens follow the BPE vocabulary in
English-only Whisper's order, <|endoftext|> first and <|notimestamps|> last, because
transformers finds timestamp tokens by their ids: any id above <|notimestamps|> is one.
A transcript is the decoder's continuation of <|startoftranscript|> <|notimestamps|>, and
ends with <|endoftext|>, as in English-only Whisper (no language or task token).

Training mostly sees the mel frames cut shortly after the speech ends (the encoder run
on the first positions only, with the same weights), which costs a fraction of the full
30-second window, then finishes on the full window the model is used with, where the
encoder's self-attention and the decoder's cross-attention also see the long silent
padding. Features are computed once, by transformers' WhisperFeatureExtractor, exactly as
at inference; beyond the speech every frame of Whisper's log-mel is the same floor
value, so only the frames up to it are kept in memory and the rest is refilled.

Seeds are fixed, algorithms deterministic and two threads used: a rerun on the same
machine and library versions writes identical weights. Another CPU may round float sums
differently and so end with slightly different weights.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt
    import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "examples" / "speech"
NAME = "tiny-whisper"
SEED = 0
THREADS = 2
SAMPLING_RATE = 16_000

# The model. Whisper's standard input: 80 mel bins, 30 s windows of 3000 frames (10 ms
# hop), halved by the second convolution to 1500 encoder positions.
MEL_BINS = 80
FRAMES = 3000
D_MODEL = 128
LAYERS = 2  # encoder and decoder each
HEADS = 8
FFN = 512
# Decoder positions: the longest transcript is about 60 tokens with the two prompt tokens.
MAX_TARGET_POSITIONS = 128
# Byte-level BPE size, special tokens excluded: 256 bytes and the merges learned.
BPE_VOCABULARY = 1000
MAX_WEIGHT_BYTES = 6_000_000

# Renderings of each sentence: more of the 45 sentences the converter uses.
BUILTIN_RENDERINGS = 14
EXTRA_RENDERINGS = 5
# Speeds (words per minute) and pitches (0-99) none of which builtin_utterances uses
# (it uses 130/160/190 and 30/50/70).
TRAIN_SPEEDS = (120, 140, 150, 170, 180, 200)
TRAIN_PITCHES = (20, 40, 45, 60, 80)
CLEAN_SHARE = 0.25
MIN_SNR_DB, MAX_SNR_DB = 5.0, 30.0
# Level relative to the built-in speech's active level (-20 dBFS), and the silence added
# before the speech, so that neither is always the same.
MIN_GAIN_DB, MAX_GAIN_DB = -15.0, 6.0
MAX_LEAD_SECONDS = 0.4
BABBLE_TALKERS = 4

# Training: STEPS AdamW steps, one schedule (linear warm-up, then a cosine decay to
# MIN_LR_SHARE of the peak). Most steps see BATCH_SIZE utterances on frames cut after the
# speech (plus PAD_FRAMES of padding); from step FULL_FROM on, every FULL_EVERY-th step
# sees FULL_BATCH_SIZE utterances on the whole 30 s window instead, which costs about
# four short steps.
STEPS = 2400
BATCH_SIZE = 16
FULL_FROM = 600
FULL_EVERY = 6
FULL_BATCH_SIZE = 8
WARMUP_STEPS = 100
LEARNING_RATE = 3e-3
MIN_LR_SHARE = 0.02
WEIGHT_DECAY = 0.01
GRADIENT_CLIP = 1.0
PAD_FRAMES = (32, 256)
# Frames are cut to a multiple of this (the second convolution halves them).
FRAME_STEP = 32
# A shuffled block of this many batches is sorted by length before it is cut into
# batches, so that a batch's utterances need about the same number of frames.
SORT_BLOCK = 16
# An auxiliary CTC loss on the encoder's output (a linear head over letters, dropped after
# training) teaches the encoder to hear before the decoder has learned to rely on it: with
# the decoder's loss alone, the decoder first learns the training sentences by heart and
# ignores the audio for a long while.
CTC_ALPHABET = " abcdefghijklmnopqrstuvwxyz'"
CTC_WEIGHT = 1.0
# Share of the decoder's input tokens replaced by random ones while training on cut
# frames, so that the next token cannot always be read off the sentence learned by heart.
CORRUPTION = 0.1

EOT = "<|endoftext|>"
SOT = "<|startoftranscript|>"
NO_TIMESTAMPS = "<|notimestamps|>"
PREVIOUS = "<|startofprev|>"
# English-only Whisper's special tokens in its order (tiny.en: 50256 to 50362), without
# the other 98 languages. transformers' tokenizer takes <|en|> to be <|startoftranscript|>
# + 1 and the no-speech token to be <|notimestamps|> - 1.
SPECIAL_TOKENS = (
    EOT,
    SOT,
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    PREVIOUS,
    "<|nocaptions|>",
    NO_TIMESTAMPS,
)

# Short everyday sentences, for vocabulary and phrasing beyond edgeport's 45: letters,
# apostrophes and plain punctuation only, no digits (a spoken "4" may be written "four").
EXTRA_SENTENCES = """
Good morning, how are you today?
I would like a cup of tea, please.
The weather is lovely this afternoon.
Could you open the window for me?
We are going to the beach on Saturday.
She left her keys on the kitchen table.
My brother plays the guitar every evening.
Please close the door when you leave.
The bus was late again this morning.
I forgot to buy milk at the shop.
Do you know where the library is?
It's raining, so take an umbrella.
The children are playing in the garden.
He drinks black coffee with no sugar.
Let's meet outside the cinema at noon.
The shop closes early on Sundays.
I can't find my phone anywhere.
Our neighbours have a very friendly dog.
The soup is too hot to eat.
Can you help me carry these bags?
We watched a funny film last night.
The train to London leaves from platform two.
She speaks French and a little German.
I need to wash the dishes after dinner.
The baby is sleeping upstairs.
Turn off the lights before you go to bed.
My sister is a nurse at the local hospital.
He runs in the park every morning.
The cake smells delicious.
Please speak a little more slowly.
Where did you put the remote control?
I'm sorry, I didn't hear what you said.
The meeting has been moved to Thursday.
It takes ten minutes to walk to school.
We need more bread for the sandwiches.
The garden looks beautiful in the spring.
Have you seen my blue jacket?
The museum is free on the first Monday.
I like to read before I go to sleep.
They bought a new car last week.
The teacher asked us to read the first chapter.
Don't forget to water the plants.
The coffee machine is broken again.
I'll call you back in five minutes.
Would you like some more rice?
The road is closed because of the snow.
My grandfather tells the best stories.
We should leave early to avoid the traffic.
The cat is hiding under the bed.
Could I have the bill, please?
This is the best pizza I have ever tasted.
The lift is out of order today.
He always arrives on time.
The sun sets very late in the summer.
I think it's going to rain tomorrow.
She is learning to drive.
The kettle has just boiled.
Where can I buy a ticket for the train?
The doctor told me to rest for a week.
My favourite colour is green.
Let me know when you are ready.
The printer has run out of paper.
We had pasta and salad for lunch.
I'm looking for a pair of warm boots.
The river is very calm this evening.
Please send me the report by Friday.
He fixed the bike with an old spanner.
The lesson starts in half an hour.
Our flight was delayed by two hours.
I usually walk to work when it's sunny.
The apples on that tree are ripe.
You can pay by card or in cash.
She painted the kitchen bright yellow.
The hotel room had a view of the sea.
My computer keeps freezing when I open the browser.
Please check your email for the new password.
The app crashed when I pressed the button.
Can you restart the server this evening?
The battery on my laptop is almost empty.
I need to update the software on my phone.
The internet connection is very slow today.
Save your work before you close the program.
The website asks me to log in again.
Our team finished the project a week early.
The manager wants a short summary of the results.
The new office is next to the station.
Could you print two copies of the contract?
The customer asked for a full refund.
The parcel was delivered to the wrong address.
I have an appointment with the dentist on Tuesday.
Take two tablets with a glass of water.
The nurse checked his blood pressure.
Drink plenty of water when it's hot.
The pharmacy is open until late tonight.
He hurt his knee playing football.
She has a bad cold and a sore throat.
The farmer grows wheat and potatoes.
Bees carry pollen from flower to flower.
The moon goes around the earth.
Water freezes when it gets very cold.
Plants need light and water to grow.
The ocean covers most of the planet.
Thunder often follows a flash of lightning.
The mountains were covered in fresh snow.
A rainbow appeared after the storm.
The forest is full of tall old trees.
Birds fly south for the winter.
The lake was frozen solid in January.
Wolves live and hunt in packs.
The desert is hot during the day and cold at night.
Scientists study the stars with large telescopes.
The heart pumps blood around the body.
Exercise is good for your health.
Fresh fruit and vegetables are good for you.
The bakery sells warm bread every morning.
Add a pinch of salt to the boiling water.
Stir the sauce slowly over a low heat.
Cut the onions into small pieces.
Bake the bread for about forty minutes.
Whisk the eggs and sugar together.
The recipe needs butter, flour and milk.
Leave the dough to rest for an hour.
The film won several awards last year.
That song always makes me happy.
The concert was loud but a lot of fun.
I really enjoyed the book you lent me.
The actors were brilliant in the second act.
The ending of the story was a surprise.
This restaurant has excellent service.
The food was cold and the waiter was rude.
I would not recommend this hotel to anyone.
What a wonderful day at the seaside!
Thank you for your help yesterday.
Congratulations on your new job!
Have a safe trip and see you soon.
Happy new year to you and your family!
Excuse me, is this seat taken?
How much does this jacket cost?
Which way is the nearest bank?
Is there a pharmacy near here?
What time does the last bus leave?
Why is the shop closed today?
Who left the door open?
When does the film start?
How long does it take to get there?
Are you coming to the party tonight?
Did you remember to lock the car?
Can we change the date of the meeting?
The government announced new rules for schools.
Prices in the shops have gone up again.
The city council will build a new bridge.
Thousands of people joined the march on Sunday.
The company plans to open a new factory.
Heavy rain caused floods in the north.
The election results will be known tomorrow.
Police closed the road after the accident.
The old castle stands on a hill above the town.
The king lived in the castle for many years.
Ancient Rome was a large and powerful city.
The explorers sailed across the ocean.
The war ended after four long years.
The painting hangs in a famous gallery.
The ship sank during a terrible storm.
The village had one shop and a small church.
The students passed their exams with good marks.
Learning a new language takes time and patience.
The lecture was about the history of science.
Write your name at the top of the page.
Read the question carefully before you answer.
The library has thousands of old books.
Mathematics is my favourite subject at school.
The professor explained the theory very clearly.
The experiment did not work the first time.
The data shows a clear rise in temperature.
Our model learns from examples.
The network is trained on a large amount of text.
The robot can pick up small objects.
The engineers tested the new engine.
The satellite sends pictures back to earth.
Electric cars are becoming more popular.
The factory uses less energy than before.
Solar panels turn sunlight into electricity.
Recycling helps to reduce waste.
Please put the bottles in the green bin.
The dog chased the ball across the field.
A small bird is singing in the tree.
The horse jumped over the fence.
The fish swam quickly away from the boat.
The kitten is playing with a piece of string.
An owl hooted in the dark forest.
The lion is sleeping in the shade.
Elephants have a very good memory.
The rabbit ran into its hole.
I'm tired, let's go home.
It was a long and busy week.
Everything will be fine, don't worry.
I'm not sure that's a good idea.
We'll see what happens next.
That's exactly what I wanted to say.
I agree with you completely.
Let's try it again tomorrow morning.
She smiled and waved goodbye.
He wasn't at home when I called.
They've already finished their homework.
We couldn't find a parking space.
You're right, I made a mistake.
It's too late to change our plans now.
The quick grey rabbit hid behind the wall.
A gentle breeze moved the curtains.
The lazy cat slept all afternoon.
The old man walked slowly along the beach.
Big black clouds covered the sky.
Every evening the family eats dinner together.
"""


@dataclass(frozen=True)
class Rendering:
    """One training utterance: what espeak-ng says and how it is heard."""

    text: str
    voice: str
    speed: int
    pitch: int
    noise: str | None  # "white", "pink", "brown", "hum", "babble" or None (clean)
    snr_db: float
    gain_db: float
    lead_seconds: float
    seed: int


@dataclass
class Features:
    """Log-mel features kept up to the frame after which all are `floor`, the decoder's
    labels and the characters the encoder's auxiliary CTC head is trained on."""

    frames: list[torch.Tensor]  # each (MEL_BINS, length)
    floors: list[float]
    labels: list[list[int]]
    characters: list[list[int]]


# --------------------------------------------------------------------------- text


def sentences() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(edgeport's 45 speech sentences, calibration then validation; EXTRA_SENTENCES)."""
    from edgeport.speech_samples import speech_sentences, suited_to_speech

    builtin = speech_sentences("calibration") + speech_sentences("validation")
    extra = tuple(line for line in EXTRA_SENTENCES.strip().splitlines())
    unsuited = [line for line in extra if not suited_to_speech(line) or re.search(r"\d", line)]
    if unsuited:
        raise SystemExit(f"EXTRA_SENTENCES: not suited to speech: {unsuited}")
    if len(set(extra)) != len(extra) or set(extra) & set(builtin):
        raise SystemExit("EXTRA_SENTENCES: a sentence appears twice")
    return builtin, extra


def normalise(text: str) -> list[str]:
    """The words a word error rate compares: lower case, hyphens as spaces, no other
    punctuation ("Don't" → "don't", "faster-than-light" → "faster than light")."""
    text = re.sub(r"[^a-z' ]", " ", text.lower().replace("-", " "))
    return [word.strip("'") for word in text.split() if word.strip("'")]


def characters(text: str) -> list[int]:
    """The CTC targets of a text: its normalised words' letters and apostrophes, spaces
    between words, as indices 1... into CTC_ALPHABET (0 is CTC's blank)."""
    return [CTC_ALPHABET.index(c) + 1 for c in " ".join(normalise(text))]


def _edits(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level Levenshtein distance."""
    previous = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, 1):
        current = [i]
        for j, other in enumerate(hypothesis, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
            )
        previous = current
    return previous[-1]


def word_error_rate(references: list[str], hypotheses: list[str]) -> tuple[float, float]:
    """(word error rate over all words, share of transcripts exactly right), normalised."""
    edits = words = exact = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        expected, got = normalise(reference), normalise(hypothesis)
        edits += _edits(expected, got)
        words += len(expected)
        exact += expected == got
    return edits / words, exact / len(references)


def build_tokenizer(texts: list[str]) -> Any:
    """A WhisperTokenizerFast over a byte-level BPE trained on `texts`, built without a
    download. Encoding a text gives <|startoftranscript|> <|notimestamps|> … <|endoftext|>,
    as English-only Whisper's tokenizer does."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import WhisperTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCABULARY,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    backend.train_from_iterator([" " + text for text in texts], trainer)
    backend.add_special_tokens([AddedToken(token, normalized=False) for token in SPECIAL_TOKENS])
    ids = {token: backend.token_to_id(token) for token in SPECIAL_TOKENS}
    backend.post_processor = processors.TemplateProcessing(
        single=f"{SOT} {NO_TIMESTAMPS} $A {EOT}",
        pair=f"{SOT} {NO_TIMESTAMPS} $A $B:1 {EOT}:1",
        special_tokens=[(token, ids[token]) for token in (SOT, NO_TIMESTAMPS, EOT)],
    )
    return WhisperTokenizerFast(
        tokenizer_object=backend,
        unk_token=EOT,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=MAX_TARGET_POSITIONS,
        add_prefix_space=False,
        errors="replace",
    )


def _labels(tokenizer: Any, text: str) -> list[int]:
    """Training labels: <|notimestamps|> text <|endoftext|>, the decoder's input being
    <|startoftranscript|> followed by the labels but the last (shift_tokens_right)."""
    ids: list[int] = tokenizer(" " + text).input_ids
    if ids[0] != tokenizer.convert_tokens_to_ids(SOT) or len(ids) > MAX_TARGET_POSITIONS:
        raise SystemExit(f"{text!r}: tokenised to {len(ids)} ids {ids[:3]}…")
    return ids[1:]


# --------------------------------------------------------------------------- audio


def plan(builtin: tuple[str, ...], extra: tuple[str, ...]) -> list[Rendering]:
    """Every training rendering, drawn from one seeded Generator."""
    from edgeport.speech_samples import VOICES

    rng = np.random.default_rng(SEED)
    renderings = []
    for texts, count in ((builtin, BUILTIN_RENDERINGS), (extra, EXTRA_RENDERINGS)):
        for text in texts:
            # Every voice in turn, from a random start: all seven for the 45 sentences.
            first = int(rng.integers(len(VOICES)))
            for k in range(count):
                noisy = rng.random() >= CLEAN_SHARE
                noise = str(rng.choice(("white", "pink", "brown", "hum", "babble")))
                # Low SNRs more often than high ones: the validation goes down to 5 dB.
                snr = MIN_SNR_DB + (MAX_SNR_DB - MIN_SNR_DB) * float(rng.random()) ** 1.5
                renderings.append(
                    Rendering(
                        text=text,
                        voice=VOICES[(first + k) % len(VOICES)],
                        speed=int(rng.choice(TRAIN_SPEEDS)),
                        pitch=int(rng.choice(TRAIN_PITCHES)),
                        noise=noise if noisy else None,
                        snr_db=round(snr, 1),
                        gain_db=round(float(rng.uniform(MIN_GAIN_DB, MAX_GAIN_DB)), 1),
                        lead_seconds=round(float(rng.uniform(0, MAX_LEAD_SECONDS)), 3),
                        seed=int(rng.integers(2**31)),
                    )
                )
    return renderings


def _levelled(rendering: Rendering) -> npt.NDArray[np.float64]:
    """espeak-ng's speech at the built-in utterances' active level (-20 dBFS)."""
    from edgeport.speech_samples import SPEECH_LEVEL, active_rms, synthesise

    clean = synthesise(rendering.text, rendering.voice, rendering.speed, rendering.pitch)
    level = active_rms(clean)
    return clean.astype(np.float64) * (SPEECH_LEVEL / level if level > 0 else 1.0)


def render(
    renderings: list[Rendering], clean: list[npt.NDArray[np.float64]]
) -> list[npt.NDArray[np.float32]]:
    """Each rendering's samples: its speech after a silence, plus its noise, at its gain.

    Noise is made as edgeport.speech_samples makes it (its helpers, a Generator seeded
    per rendering) and scaled the same way, against the speech's active level. Babble is
    BABBLE_TALKERS other training renderings of other sentences, each at the same active
    level, looped from a random offset.
    """
    from edgeport.speech_samples import MAX_PEAK, _coloured, _hum, _mix, active_rms

    audios = []
    for rendering, speech in zip(renderings, clean, strict=True):
        rng = np.random.default_rng(rendering.seed)
        lead = np.zeros(round(rendering.lead_seconds * SAMPLING_RATE))
        speech = np.concatenate([lead, speech])
        length = len(speech)
        if rendering.noise is not None:
            if rendering.noise == "white":
                noise = rng.standard_normal(length)
            elif rendering.noise in ("pink", "brown"):
                noise = _coloured(rng, length, 1.0 if rendering.noise == "pink" else 2.0)
            elif rendering.noise == "hum":
                noise = _hum(rng, length)[0]
            else:
                noise = np.zeros(length)
                talkers = 0
                while talkers < BABBLE_TALKERS:
                    other = int(rng.integers(len(renderings)))
                    if renderings[other].text == rendering.text:
                        continue
                    voice = clean[other]
                    looped = np.resize(voice / active_rms(voice.astype(np.float32)), length)
                    noise += np.roll(looped, int(rng.integers(length)))
                    talkers += 1
            speech = _mix(speech, noise, rendering.snr_db)
        mixed = speech * 10 ** (rendering.gain_db / 20)
        peak = float(np.abs(mixed).max(initial=0.0))
        if peak > MAX_PEAK:
            mixed *= MAX_PEAK / peak
        if length > FRAMES * SAMPLING_RATE // 100:
            raise SystemExit(f"{rendering}: longer than Whisper's 30 s window")
        audios.append(mixed.astype(np.float32))
    return audios


def features(
    extractor: Any, audios: list[npt.NDArray[np.float32]]
) -> tuple[list[Any], list[float]]:
    """WhisperFeatureExtractor's input features of each audio, cut after the speech.

    A frame is centred on every 160th sample and spans 400, so the frames from
    (samples + 200) / 160 on see only the zero padding: log10 of the floor power, clamped
    to the utterance's maximum - 8, then scaled, the same value throughout. They are cut
    off (checked, not assumed) and refilled with that floor value when batched.
    """
    import torch

    frames, floors = [], []
    for audio in audios:
        mel = extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="np")
        mel = mel["input_features"][0]
        length = min(FRAMES, math.ceil((len(audio) + 200) / 160) + 2)
        length += length % 2
        floor = mel[0, -1]
        if not (mel[:, length:] == floor).all():
            raise SystemExit("the log-mel frames after the speech are not all the floor value")
        frames.append(torch.from_numpy(np.ascontiguousarray(mel[:, :length])))
        floors.append(float(floor))
    return frames, floors


def _batch(data: Features, indices: list[int], length: int) -> torch.Tensor:
    """(len(indices), MEL_BINS, length) input features: the kept frames, then the floor."""
    import torch

    batch = torch.empty(len(indices), MEL_BINS, length)
    for row, index in enumerate(indices):
        kept = data.frames[index][:, :length]
        batch[row, :, : kept.shape[1]] = kept
        batch[row, :, kept.shape[1] :] = data.floors[index]
    return batch


def _decoder_inputs(
    data: Features, indices: list[int], start: int, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder_input_ids, labels): <|startoftranscript|> + labels[:-1], and the labels
    with -100 (ignored) after the end."""
    import torch

    longest = max(len(data.labels[index]) for index in indices)
    inputs = torch.full((len(indices), longest), pad)
    labels = torch.full((len(indices), longest), -100)
    for row, index in enumerate(indices):
        ids = torch.tensor(data.labels[index])
        labels[row, : len(ids)] = ids
        inputs[row, 0] = start
        inputs[row, 1 : len(ids)] = ids[:-1]
    return inputs, labels


# --------------------------------------------------------------------------- model


def build(tokenizer: Any) -> tuple[Any, Any, Any]:
    """(model, feature extractor, generation config) for an English-only Whisper."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    eot, sot = tokenizer.convert_tokens_to_ids(EOT), tokenizer.convert_tokens_to_ids(SOT)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=MEL_BINS,
        d_model=D_MODEL,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        max_source_positions=FRAMES // 2,
        max_target_positions=MAX_TARGET_POSITIONS,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        # Generation settings live in generation_config.json only.
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    model = WhisperForConditionalGeneration(config)
    # Whisper initialises its convolutions like its linear layers (normal, std 0.02),
    # which leaves the audio's embedding a tenth of the sinusoidal positions' it is added
    # to; He initialisation starts the two on a par.
    for conv in (model.model.encoder.conv1, model.model.encoder.conv2):
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    space = tokenizer.convert_tokens_to_ids("Ġ")  # byte-level BPE's space on its own
    generation = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=MAX_TARGET_POSITIONS,
        # English-only: generate() starts every transcript <|startoftranscript|>
        # <|notimestamps|> (it appends no_timestamps_token_id when timestamps are not
        # asked for), with no language detection (no lang_to_id) and no task token.
        is_multilingual=False,
        no_timestamps_token_id=tokenizer.convert_tokens_to_ids(NO_TIMESTAMPS),
        prev_sot_token_id=tokenizer.convert_tokens_to_ids(PREVIOUS),
        return_timestamps=False,
        suppress_tokens=[],
        # As Whisper: a transcript does not start with a bare space or end at once.
        begin_suppress_tokens=[space, eot],
    )
    model.generation_config = generation
    extractor = WhisperFeatureExtractor(
        feature_size=MEL_BINS,
        sampling_rate=SAMPLING_RATE,
        hop_length=160,
        chunk_length=30,
        n_fft=400,
    )
    return model, extractor, generation


def _encode(model: Any, input_features: torch.Tensor) -> torch.Tensor:
    """WhisperEncoder.forward on any even number of frames, not only 3000: the same
    weights and arithmetic on the first positions (it refuses any other length)."""
    from torch.nn import functional

    encoder = model.model.encoder
    hidden = functional.gelu(encoder.conv1(input_features))
    hidden = functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer in encoder.layers:
        hidden = layer(hidden, None, layer_head_mask=None)[0]
    return encoder.layer_norm(hidden)  # type: ignore[no-any-return]


def _schedule(step: int) -> float:
    """Linear warm-up, then cosine decay to MIN_LR_SHARE, as a share of LEARNING_RATE."""
    total = STEPS
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS)
    return MIN_LR_SHARE + (1 - MIN_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * progress))


def _batches(data: Features, generator: torch.Generator, size: int) -> list[list[int]]:
    """One epoch in batches of `size`: shuffled, sorted by length within blocks of
    SORT_BLOCK batches, and the batches shuffled again."""
    import torch

    order = torch.randperm(len(data.frames), generator=generator).tolist()
    block = size * SORT_BLOCK
    batches = []
    for start in range(0, len(order) - size + 1, block):
        chunk = sorted(order[start : start + block], key=lambda i: data.frames[i].shape[1])
        batches += [chunk[i : i + size] for i in range(0, len(chunk) - size + 1, size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def train(model: Any, data: Features, tokenizer: Any) -> None:
    import torch
    from torch.nn import functional

    generator = torch.Generator().manual_seed(SEED)
    ctc_head = torch.nn.Linear(D_MODEL, len(CTC_ALPHABET) + 1)
    parameters = [p for p in model.parameters() if p.requires_grad] + list(ctc_head.parameters())
    decay = [p for p in parameters if p.ndim >= 2]
    no_decay = [p for p in parameters if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0}],
        lr=LEARNING_RATE,
        betas=(0.9, 0.98),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule)
    start = tokenizer.convert_tokens_to_ids(SOT)
    pad = tokenizer.convert_tokens_to_ids(EOT)
    model.train()
    short: list[list[int]] = []
    full: list[list[int]] = []
    started = time.perf_counter()
    running = running_ctc = 0.0
    for step in range(STEPS):
        is_full = step >= FULL_FROM and (step - FULL_FROM) % FULL_EVERY == FULL_EVERY - 1
        if is_full:
            full = full or _batches(data, generator, FULL_BATCH_SIZE)
            indices = full.pop()
        else:
            short = short or _batches(data, generator, BATCH_SIZE)
            indices = short.pop()
        if not is_full:
            longest = max(data.frames[i].shape[1] for i in indices)
            extra = int(torch.randint(PAD_FRAMES[0], PAD_FRAMES[1] + 1, (1,), generator=generator))
            length = min(FRAMES, math.ceil((longest + extra) / FRAME_STEP) * FRAME_STEP)
        else:
            length = FRAMES
        input_features = _batch(data, indices, length)
        decoder_input_ids, labels = _decoder_inputs(data, indices, start, pad)
        if not is_full:
            corrupt = torch.rand(decoder_input_ids.shape, generator=generator) < CORRUPTION
            corrupt[:, :2] = False  # <|startoftranscript|> <|notimestamps|>
            random = torch.randint(pad, decoder_input_ids.shape, generator=generator)
            decoder_input_ids = torch.where(corrupt, random, decoder_input_ids)
        encoded = _encode(model, input_features)
        logits = model(encoder_outputs=(encoded,), decoder_input_ids=decoder_input_ids).logits
        loss = functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        targets = [torch.tensor(data.characters[i]) for i in indices]
        ctc = functional.ctc_loss(
            torch.log_softmax(ctc_head(encoded), -1).transpose(0, 1),
            torch.cat(targets),
            torch.full((len(indices),), encoded.shape[1]),
            torch.tensor([len(target) for target in targets]),
            zero_infinity=True,
        )
        optimizer.zero_grad(set_to_none=True)
        (loss + CTC_WEIGHT * ctc).backward()
        torch.nn.utils.clip_grad_norm_(parameters, GRADIENT_CLIP)
        optimizer.step()
        schedule.step()
        running += loss.item()
        running_ctc += ctc.item()
        if (step + 1) % 50 == 0 or step + 1 == STEPS:
            print(
                f"  step {step + 1:5d}  loss {running / 50:.3f}  ctc {running_ctc / 50:.3f}  "
                f"frames {length}  "
                f"lr {schedule.get_last_lr()[0]:.2e}  {time.perf_counter() - started:.0f} s",
                flush=True,
            )
            running = running_ctc = 0.0
    model.eval()


def transcribe(model: Any, tokenizer: Any, input_features: torch.Tensor) -> list[str]:
    """Greedy transcripts by model.generate, as the converter compares them."""
    import torch

    texts = []
    with torch.inference_mode():
        for start in range(0, len(input_features), 16):
            ids = model.generate(input_features=input_features[start : start + 16])
            texts += tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [text.strip() for text in texts]


# --------------------------------------------------------------------------- output


def _drop_encoder_positions(path: Path) -> None:
    """Leave out the encoder's positional table (1500 x 128, never trained: Whisper's fixed
    sinusoids), which keeps the file under 5 MB. transformers rebuilds the same sinusoids
    when it loads the model (it says the table was "newly initialized"); _check_reload
    holds the reloaded model to the trained one."""
    from safetensors.torch import load_file, save_file

    weights = load_file(path)
    del weights["model.encoder.embed_positions.weight"]
    save_file(weights, path, metadata={"format": "pt"})


def _write(model: Any, extractor: Any, tokenizer: Any, folder: Path) -> None:
    from transformers import WhisperProcessor

    # Written next to the target and swapped in, so an interrupted run never leaves a
    # half-written model folder behind, nor files of an older run beside the new ones.
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        _drop_encoder_positions(staging / "model.safetensors")
        WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(staging)
        # mkdtemp makes a private folder (and some files come out private too): the
        # model is meant to be shared, so give it the usual permissions.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_reload(
    folder: Path, model: Any, texts: list[str], audios: list[npt.NDArray[np.float32]]
) -> None:
    """The folder loads through the Auto classes and the speech recognition pipeline, and
    gives the trained model's transcripts."""
    from transformers import (
        AutoModelForSpeechSeq2Seq,
        AutoProcessor,
        AutoTokenizer,
        WhisperProcessor,
        pipeline,
    )

    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    if not isinstance(processor, WhisperProcessor):
        raise SystemExit(f"{folder}: AutoProcessor gives {type(processor).__name__}")
    for text in texts:
        ids = tokenizer(" " + text).input_ids
        if tokenizer.decode(ids, skip_special_tokens=True) != " " + text:
            raise SystemExit(f"{folder}: the tokenizer does not give back {text!r}")
    features = processor(audios, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features
    reloaded = AutoModelForSpeechSeq2Seq.from_pretrained(folder).eval()
    expected = transcribe(model, tokenizer, features)
    if transcribe(reloaded, tokenizer, features) != expected:
        raise SystemExit(f"{folder}: the reloaded model transcribes differently")
    recogniser = pipeline("automatic-speech-recognition", model=str(folder))
    for audio, text in zip(audios, expected, strict=True):
        got = recogniser(audio.copy())["text"].strip()
        if got != text:
            raise SystemExit(f"{folder}: the pipeline heard {got!r}, generate() {text!r}")
    # generate() returns the tokens after the forced prompt; edgeport reads the prompt
    # from generation_config.json, and it must be the one generate() forces.
    from edgeport.families.speech_recognition import whisper_prompt

    prompt = whisper_prompt(folder)
    if prompt != tokenizer.convert_tokens_to_ids([SOT, NO_TIMESTAMPS]):
        raise SystemExit(f"{folder}: the decoder prompt is {prompt}")


def run(out: Path) -> dict[str, Any]:
    import torch

    from edgeport.speech_samples import _espeak, _synthesised, builtin_utterances

    started = time.perf_counter()
    cpu_started = time.process_time()
    torch.manual_seed(SEED)
    builtin, extra = sentences()
    tokenizer = build_tokenizer([*builtin, *extra])
    model, extractor, _ = build(tokenizer)

    renderings = plan(builtin, extra)
    clean = [_levelled(rendering) for rendering in renderings]
    audios = render(renderings, clean)
    del clean
    _espeak.cache_clear()
    _synthesised.cache_clear()
    frames, floors = features(extractor, audios)
    seconds = sum(len(audio) for audio in audios) / SAMPLING_RATE
    del audios
    data = Features(
        frames,
        floors,
        [_labels(tokenizer, r.text) for r in renderings],
        [characters(r.text) for r in renderings],
    )
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"{NAME}: {parameters:,} trained parameters, {len(tokenizer)} tokens, "
        f"{len(renderings)} utterances ({len(builtin)} + {len(extra)} sentences, "
        f"{seconds / 60:.0f} minutes of speech), "
        f"{time.perf_counter() - started:.0f} s synthesis and features",
        flush=True,
    )

    train(model, data, tokenizer)
    trained = time.perf_counter()

    validation = builtin_utterances("validation")
    val_audio = [utterance.samples for utterance in validation]
    val_features = extractor(val_audio, sampling_rate=SAMPLING_RATE, return_tensors="pt")
    transcripts = transcribe(model, tokenizer, val_features.input_features)
    references = [utterance.text for utterance in validation]
    wer, exact = word_error_rate(references, transcripts)
    for utterance, transcript in zip(validation, transcripts, strict=True):
        if normalise(transcript) != normalise(utterance.text):
            print(f"  {utterance.name}\n    said  {utterance.text}\n    heard {transcript}")

    folder = out / NAME
    _write(model, extractor, tokenizer, folder)
    _check_reload(folder, model, references[:4], val_audio[:4])
    weights = (folder / "model.safetensors").stat().st_size
    if weights > MAX_WEIGHT_BYTES:
        raise SystemExit(f"{folder}: {weights:,} bytes of weights, over {MAX_WEIGHT_BYTES:,}")
    result = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "weight_bytes": weights,
        "wer": wer,
        "exact": exact,
        "training_seconds": trained - started,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
    }
    print(
        f"{NAME}: {result['parameters']:,} parameters, {weights / 1e6:.2f} MB of weights; "
        f"on builtin_utterances('validation') ({len(validation)}): word error rate "
        f"{wer:.1%}, {exact:.0%} transcribed exactly; "
        f"{result['seconds']:.0f} s ({result['cpu_seconds']:.0f} CPU s) -> {folder}",
        flush=True,
    )
    print(json.dumps({key: round(value, 4) for key, value in result.items()}), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    run(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
