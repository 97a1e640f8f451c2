"""Train the tiny English→French T5 of examples/text/tiny-t5-en-fr/ from scratch, deterministically.

A real `T5ForConditionalGeneration` (encoder, decoder, relative position buckets, tied
embeddings, a Unigram tokenizer with Metaspace pre-tokenisation, as t5-small has) small
enough to commit, whose weights really learned to translate. It exists to test the
conversion of encoder-decoder models: ONNX and OpenVINO exports, int8 and int4
quantisation are judged by comparing the converted model's greedy translations with the
PyTorch model's (share of identical outputs, chrF). Random weights emit arbitrary tokens
that no quantiser can be blamed for; these weights give confident, correct translations,
so a conversion that changes them shows.

The corpus is made here, with no download: a small grammar of English sentences and their
French translations (determiners, nouns with their gender, present-tense verbs for six
persons, adjectives that agree and that go before or after the noun, prepositions,
negation and questions), with French elision (l'arbre, n'aime, qu'il), contractions (près
du jardin), "de" after a negation and before a plural adjective, and the liaison forms
cet, mon, bel, vieil and nouvel:

    The small cat sees the red car.           Le petit chat voit la voiture rouge.
    I do not like an old umbrella.            Je n'aime pas de vieux parapluie.
    Does she find my new computer?            Est-ce qu'elle trouve mon nouvel ordinateur ?
    Where are the white horses?               Où sont les chevaux blancs ?

Sentences are drawn from the grammar with a seeded generator, each English sentence once.
The first CALIBRATION_SENTENCES form the calibration split and the next
VALIDATION_SENTENCES the validation split, both held out of training: no training sentence
is one of them. The exact match and chrF printed are on the validation split.

    python scripts/train_translation_model.py [examples/text]

writes, each folder atomically (built beside the target, then swapped in):

- tiny-t5-en-fr/: config.json, generation_config.json (greedy, at most MAX_LENGTH
  tokens), model.safetensors and a fast tokenizer (tokenizer.json, tokenizer_config.json,
  special_tokens_map.json) that loads as T5TokenizerFast with no sentencepiece file: a
  Unigram model of 512 pieces built here with the `tokenizers` library from the training
  split of both languages (see _unigram_pieces), with special tokens <pad> 0, </s> 1,
  <unk> 2, </s> appended to every text, and no <extra_id_*> sentinels. Inputs are plain
  English, with no task prefix.
- translation-samples/: calibration.txt and validation.txt (one English sentence a line,
  for `--samples DIR`) and validation.fr.txt (the reference translations, same order).

Training: 3,000 AdamW steps of 64 sentence pairs (warm-up, then cosine decay), no dropout,
on 40,000 pairs: with a few thousand the model learns them by heart and translates unseen
sentences worse. Batches hold sentences of about one length, which halves the padding.

Seeds are fixed, algorithms deterministic and one thread used: a rerun on the same machine
and library versions writes identical weights. Another CPU may round float sums
differently and so end with slightly different weights. One thread, not two: these
matrices are too small to gain from a second, and on two cores shared with other work a
second thread made each step several times slower (its threads wait on each other).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import string
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "examples" / "text"
NAME = "tiny-t5-en-fr"
SAMPLES_NAME = "translation-samples"
SEED = 0
THREADS = 1

CALIBRATION_SENTENCES = 32
VALIDATION_SENTENCES = 64
TRAIN_SENTENCES = 40000
# Target size of the Unigram vocabulary, special tokens included.
VOCAB_SIZE = 512
# Tokens, </s> included: the tokenizer's model_max_length and generation's max_length.
# The longest sentence of the grammar is about half of it.
MAX_LENGTH = 64

STEPS = 3000
BATCH_SIZE = 64
POOL_BATCHES = 32
LEARNING_RATE = 2e-3
WARMUP_STEPS = 200
WEIGHT_DECAY = 0.01
BETA2 = 0.98
DROPOUT = 0.0
# Below this share of exact translations on the validation split the run fails.
MIN_EXACT_MATCH = 0.9
MAX_WEIGHT_BYTES = 4_200_000

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)  # ids 0, 1, 2, as in T5's own vocabulary
FRENCH_LETTERS = "àâæçéèêëîïôœùûüÿ"
ALPHABET = string.ascii_letters + string.digits + string.punctuation + FRENCH_LETTERS
ALPHABET += FRENCH_LETTERS.upper()

# --- The grammar -------------------------------------------------------------------------
#
# Nouns: English singular | plural | French singular | plural | gender | kind, where kind is
# "a" (animate: can see, like, be happy), "p" (a place: in, on, under it) or "t" (a thing).
# No French noun starts with an aspirated h: every vowel or h elides what comes before.
NOUNS = """
cat|cats|chat|chats|m|a
dog|dogs|chien|chiens|m|a
bird|birds|oiseau|oiseaux|m|a
horse|horses|cheval|chevaux|m|a
rabbit|rabbits|lapin|lapins|m|a
mouse|mice|souris|souris|f|a
cow|cows|vache|vaches|f|a
boy|boys|garçon|garçons|m|a
girl|girls|fille|filles|f|a
man|men|homme|hommes|m|a
woman|women|femme|femmes|f|a
child|children|enfant|enfants|m|a
teacher|teachers|professeur|professeurs|m|a
doctor|doctors|médecin|médecins|m|a
student|students|étudiant|étudiants|m|a
friend|friends|ami|amis|m|a
car|cars|voiture|voitures|f|p
house|houses|maison|maisons|f|p
table|tables|table|tables|f|p
chair|chairs|chaise|chaises|f|p
window|windows|fenêtre|fenêtres|f|p
door|doors|porte|portes|f|p
box|boxes|boîte|boîtes|f|p
school|schools|école|écoles|f|p
bed|beds|lit|lits|m|p
tree|trees|arbre|arbres|m|p
garden|gardens|jardin|jardins|m|p
boat|boats|bateau|bateaux|m|p
train|trains|train|trains|m|p
bag|bags|sac|sacs|m|p
flower|flowers|fleur|fleurs|f|t
apple|apples|pomme|pommes|f|t
letter|letters|lettre|lettres|f|t
lamp|lamps|lampe|lampes|f|t
cup|cups|tasse|tasses|f|t
key|keys|clé|clés|f|t
shirt|shirts|chemise|chemises|f|t
bottle|bottles|bouteille|bouteilles|f|t
plate|plates|assiette|assiettes|f|t
book|books|livre|livres|m|t
pen|pens|stylo|stylos|m|t
ball|balls|ballon|ballons|m|t
hat|hats|chapeau|chapeaux|m|t
bike|bikes|vélo|vélos|m|t
cake|cakes|gâteau|gâteaux|m|t
computer|computers|ordinateur|ordinateurs|m|t
phone|phones|téléphone|téléphones|m|t
knife|knives|couteau|couteaux|m|t
glass|glasses|verre|verres|m|t
toy|toys|jouet|jouets|m|t
umbrella|umbrellas|parapluie|parapluies|m|t
egg|eggs|œuf|œufs|m|t
"""

# Verbs: English base | third person singular | French je | il | nous | vous | ils.
VERBS = """
see|sees|vois|voit|voyons|voyez|voient
like|likes|aime|aime|aimons|aimez|aiment
love|loves|adore|adore|adorons|adorez|adorent
prefer|prefers|préfère|préfère|préférons|préférez|préfèrent
eat|eats|mange|mange|mangeons|mangez|mangent
want|wants|veux|veut|voulons|voulez|veulent
have|has|ai|a|avons|avez|ont
take|takes|prends|prend|prenons|prenez|prennent
find|finds|trouve|trouve|trouvons|trouvez|trouvent
look for|looks for|cherche|cherche|cherchons|cherchez|cherchent
buy|buys|achète|achète|achetons|achetez|achètent
sell|sells|vends|vend|vendons|vendez|vendent
watch|watches|regarde|regarde|regardons|regardez|regardent
carry|carries|porte|porte|portons|portez|portent
bring|brings|apporte|apporte|apportons|apportez|apportent
open|opens|ouvre|ouvre|ouvrons|ouvrez|ouvrent
close|closes|ferme|ferme|fermons|fermez|ferment
read|reads|lis|lit|lisons|lisez|lisent
draw|draws|dessine|dessine|dessinons|dessinez|dessinent
paint|paints|peins|peint|peignons|peignez|peignent
clean|cleans|nettoie|nettoie|nettoyons|nettoyez|nettoient
wash|washes|lave|lave|lavons|lavez|lavent
hold|holds|tiens|tient|tenons|tenez|tiennent
follow|follows|suis|suit|suivons|suivez|suivent
know|knows|connais|connaît|connaissons|connaissez|connaissent
push|pushes|pousse|pousse|poussons|poussez|poussent
pull|pulls|tire|tire|tirons|tirez|tirent
break|breaks|casse|casse|cassons|cassez|cassent
catch|catches|attrape|attrape|attrapons|attrapez|attrapent
hear|hears|entends|entend|entendons|entendez|entendent
choose|chooses|choisis|choisit|choisissons|choisissez|choisissent
forget|forgets|oublie|oublie|oublions|oubliez|oublient
"""

# Adjectives: English | French masculine | feminine | masculine plural | feminine plural |
# where it goes ("before" the noun, as petit and grand do, or "after" it) | who it suits
# ("any" noun or "a", animate ones only) | masculine singular before a vowel, if special.
ADJECTIVES = """
small|petit|petite|petits|petites|before|any|
big|grand|grande|grands|grandes|before|any|
young|jeune|jeune|jeunes|jeunes|before|a|
old|vieux|vieille|vieux|vieilles|before|any|vieil
good|bon|bonne|bons|bonnes|before|any|
beautiful|beau|belle|beaux|belles|before|any|bel
new|nouveau|nouvelle|nouveaux|nouvelles|before|any|nouvel
red|rouge|rouge|rouges|rouges|after|any|
blue|bleu|bleue|bleus|bleues|after|any|
green|vert|verte|verts|vertes|after|any|
black|noir|noire|noirs|noires|after|any|
white|blanc|blanche|blancs|blanches|after|any|
yellow|jaune|jaune|jaunes|jaunes|after|any|
grey|gris|grise|gris|grises|after|any|
happy|heureux|heureuse|heureux|heureuses|after|a|
sad|triste|triste|tristes|tristes|after|a|
hot|chaud|chaude|chauds|chaudes|after|any|
cold|froid|froide|froids|froides|after|any|
heavy|lourd|lourde|lourds|lourdes|after|any|
light|léger|légère|légers|légères|after|any|
clean|propre|propre|propres|propres|after|any|
dirty|sale|sale|sales|sales|after|any|
fast|rapide|rapide|rapides|rapides|after|any|
round|rond|ronde|ronds|rondes|after|any|
"""
COLOURS = frozenset({"red", "blue", "green", "black", "white", "yellow", "grey"})

# English | French, for "X is <preposition> the Y".
PREPOSITIONS = """
on|sur
under|sous
in|dans
behind|derrière
in front of|devant
near|près de
next to|à côté de
"""

# Subject pronouns: English | French | French person (0 je, 1 il, 2 nous, 3 vous, 4 ils) |
# feminine. "you" is always vous and "they" always ils, so that each English sentence has
# one translation.
PRONOUNS = """
I|je|0|m
you|vous|3|m
he|il|1|m
she|elle|1|f
we|nous|2|m
they|ils|4|m
"""
# Être, by French person.
ETRE = ("suis", "est", "sommes", "êtes", "sont")

FRENCH_VOWELS = frozenset("aeiouyàâéèêëîïôœûh")
ELISIONS = {"le": "l'", "la": "l'", "je": "j'", "ne": "n'", "que": "qu'", "de": "d'"}
CONTRACTIONS = {("de", "le"): "du", ("de", "les"): "des"}


@dataclass(frozen=True)
class Noun:
    english: str
    english_plural: str
    french: str
    french_plural: str
    feminine: bool
    kind: str


@dataclass(frozen=True)
class Verb:
    english: str
    english_s: str
    french: tuple[str, ...]  # by French person


@dataclass(frozen=True)
class Adjective:
    english: str
    forms: tuple[str, str, str, str]  # masculine, feminine, masculine plural, feminine plural
    before: bool
    animate_only: bool
    before_vowel: str  # the masculine singular before a vowel: bel, vieil, nouvel; or ""

    def french(self, feminine: bool, plural: bool) -> str:
        return self.forms[2 * plural + feminine]


@dataclass(frozen=True)
class Phrase:
    """A noun phrase or pronoun, in both languages, with what agreement needs."""

    english: list[str]
    french: list[str]
    person: int  # French person of the verb it is the subject of
    feminine: bool
    plural: bool

    @property
    def third_singular(self) -> bool:
        return self.person == 1


def _rows(table: str) -> list[list[str]]:
    return [line.split("|") for line in table.strip().splitlines()]


NOUN_LIST = [Noun(r[0], r[1], r[2], r[3], r[4] == "f", r[5]) for r in _rows(NOUNS)]
VERB_LIST = [Verb(r[0], r[1], tuple(r[2:])) for r in _rows(VERBS)]
ADJECTIVE_LIST = [
    Adjective(r[0], (r[1], r[2], r[3], r[4]), r[5] == "before", r[6] == "a", r[7])
    for r in _rows(ADJECTIVES)
]
PREPOSITION_LIST = [(r[0], r[1]) for r in _rows(PREPOSITIONS)]
PRONOUN_LIST = [
    Phrase([r[0]], [r[1]], int(r[2]), r[3] == "f", int(r[2]) >= 2) for r in _rows(PRONOUNS)
]


def _vowel(word: str) -> bool:
    return word[0].lower() in FRENCH_VOWELS


def _determiner(
    kind: str, noun: Noun, plural: bool, next_word: str, has_before: bool, negated: bool
) -> tuple[str, str]:
    """(English, French) determiner. kind: the, a, my, this, two or three."""
    vowel = _vowel(next_word)
    if kind == "the":
        return "the", "les" if plural else ("la" if noun.feminine else "le")
    if kind == "a":
        # "pas de" after a negation, "de" before a plural adjective (de petits chats).
        english = ("any" if negated else "some") if plural else "a"
        if negated:
            return english, "de"
        if plural:
            return english, "de" if has_before else "des"
        return english, "une" if noun.feminine else "un"
    if kind == "my":
        if plural:
            return "my", "mes"
        return "my", "ma" if noun.feminine and not vowel else "mon"
    if kind == "this":
        if plural:
            return "these", "ces"
        if noun.feminine:
            return "this", "cette"
        return "this", "cet" if vowel else "ce"
    return kind, {"two": "deux", "three": "trois"}[kind]


def _noun_phrase(
    rng: random.Random,
    noun: Noun,
    *,
    determiners: Sequence[str] = ("the", "the", "the", "a", "a", "my", "this", "two", "three"),
    negated: bool = False,
    question: bool = False,
    avoid: Adjective | None = None,
) -> Phrase:
    kind = rng.choice(determiners)
    plural = kind in ("two", "three") or rng.random() < 0.35
    suited = [
        a for a in ADJECTIVE_LIST if a is not avoid and (noun.kind == "a" or not a.animate_only)
    ]
    draw = rng.random()
    adjectives: list[Adjective] = []
    if draw < 0.35:
        adjectives = [rng.choice(suited)]
    elif draw < 0.5:
        # Two adjectives: one that goes before the noun and a colour ("the small red car").
        adjectives = [
            rng.choice([a for a in suited if a.before]),
            rng.choice([a for a in suited if a.english in COLOURS]),
        ]
    before = [a for a in adjectives if a.before]
    after = [a for a in adjectives if not a.before]
    noun_fr = noun.french_plural if plural else noun.french
    before_fr = []
    for adjective in before:
        form = adjective.french(noun.feminine, plural)
        if not noun.feminine and not plural and adjective.before_vowel and _vowel(noun_fr):
            form = adjective.before_vowel
        before_fr.append(form)
    next_word = before_fr[0] if before_fr else noun_fr
    det_en, det_fr = _determiner(kind, noun, plural, next_word, bool(before), negated)
    if question and det_en == "some":
        det_en = "any"
    english = [
        det_en,
        *(a.english for a in adjectives),
        noun.english_plural if plural else noun.english,
    ]
    french = [det_fr, *before_fr, noun_fr, *(a.french(noun.feminine, plural) for a in after)]
    return Phrase(english, french, 4 if plural else 1, noun.feminine, plural)


def _nouns(kinds: str) -> list[Noun]:
    return [noun for noun in NOUN_LIST if noun.kind in kinds]


def _subject(rng: random.Random) -> Phrase:
    if rng.random() < 0.3:
        return rng.choice(PRONOUN_LIST)
    return _noun_phrase(rng, rng.choice(_nouns("a")))


def _object(rng: random.Random, *, negated: bool = False, question: bool = False) -> Phrase:
    return _noun_phrase(rng, rng.choice(NOUN_LIST), negated=negated, question=question)


def _place(rng: random.Random) -> tuple[list[str], list[str]]:
    english, french = rng.choice(PREPOSITION_LIST)
    phrase = _noun_phrase(
        rng, rng.choice(_nouns("p")), determiners=("the", "the", "the", "my", "this")
    )
    return [english, *phrase.english], [*french.split(), *phrase.french]


def _do(subject: Phrase) -> str:
    return "does" if subject.third_singular else "do"


def _be(subject: Phrase) -> str:
    if subject.english == ["I"]:
        return "am"
    return "is" if subject.third_singular else "are"


Sentence = tuple[list[str], list[str], bool]  # English words, French words, question


def _transitive(rng: random.Random) -> Sentence:
    """The small cat sees the red car. / Le petit chat voit la voiture rouge."""
    subject, verb, thing = _subject(rng), rng.choice(VERB_LIST), _object(rng)
    english = [*subject.english, verb.english_s if subject.third_singular else verb.english]
    english += thing.english
    french = [*subject.french, verb.french[subject.person], *thing.french]
    if rng.random() < 0.2:
        place_en, place_fr = _place(rng)
        english += place_en
        french += place_fr
    return english, french, False


def _negated(rng: random.Random) -> Sentence:
    """The cat does not see a car. / Le chat ne voit pas de voiture."""
    subject, verb = _subject(rng), rng.choice(VERB_LIST)
    thing = _object(rng, negated=True)
    english = [*subject.english, _do(subject), "not", verb.english, *thing.english]
    french = [*subject.french, "ne", verb.french[subject.person], "pas", *thing.french]
    return english, french, False


def _yes_no(rng: random.Random) -> Sentence:
    """Does the cat see the car? / Est-ce que le chat voit la voiture ?"""
    subject, verb = _subject(rng), rng.choice(VERB_LIST)
    thing = _object(rng, question=True)
    english = [_do(subject), *subject.english, verb.english, *thing.english]
    french = ["est-ce", "que", *subject.french, verb.french[subject.person], *thing.french]
    return english, french, True


def _what(rng: random.Random) -> Sentence:
    """What does the cat see? / Qu'est-ce que le chat voit ?"""
    subject, verb = _subject(rng), rng.choice(VERB_LIST)
    english = ["what", _do(subject), *subject.english, verb.english]
    french = ["qu'est-ce", "que", *subject.french, verb.french[subject.person]]
    return english, french, True


def _who(rng: random.Random) -> Sentence:
    """Who sees the car? / Qui voit la voiture ?"""
    verb, thing = rng.choice(VERB_LIST), _object(rng, question=True)
    return ["who", verb.english_s, *thing.english], ["qui", verb.french[1], *thing.french], True


def _attribute(rng: random.Random) -> Sentence:
    """The car is red. / The cats are not small. / Is she happy? (and their French)"""
    noun = rng.choice(NOUN_LIST)
    adjective = rng.choice([a for a in ADJECTIVE_LIST if noun.kind == "a" or not a.animate_only])
    # Only he, she and they: "I am happy" does not say which gender French needs.
    pronouns = [p for p in PRONOUN_LIST if p.person in (1, 4)]
    if noun.kind == "a" and rng.random() < 0.3:
        subject = rng.choice(pronouns)
    else:
        subject = _noun_phrase(rng, noun, avoid=adjective)
    french_adjective = adjective.french(subject.feminine, subject.plural)
    be_en, be_fr = _be(subject), ETRE[subject.person]
    form = rng.random()
    if form < 0.5:
        english = [*subject.english, be_en, adjective.english]
        return english, [*subject.french, be_fr, french_adjective], False
    if form < 0.75:
        english = [*subject.english, be_en, "not", adjective.english]
        return english, [*subject.french, "ne", be_fr, "pas", french_adjective], False
    english = [be_en, *subject.english, adjective.english]
    return english, ["est-ce", "que", *subject.french, be_fr, french_adjective], True


def _location(rng: random.Random) -> Sentence:
    """The cat is under the table. / Are you in the garden? / Where are the cats?"""
    form = rng.random()
    if form < 0.2:
        subject = _noun_phrase(rng, rng.choice(_nouns("at")))
        english = ["where", _be(subject), *subject.english]
        return english, ["où", ETRE[subject.person], *subject.french], True
    subject = _subject(rng) if rng.random() < 0.5 else _noun_phrase(rng, rng.choice(_nouns("t")))
    place_en, place_fr = _place(rng)
    be_en, be_fr = _be(subject), ETRE[subject.person]
    if form < 0.6:
        return [*subject.english, be_en, *place_en], [*subject.french, be_fr, *place_fr], False
    if form < 0.8:
        english = [*subject.english, be_en, "not", *place_en]
        return english, [*subject.french, "ne", be_fr, "pas", *place_fr], False
    english = [be_en, *subject.english, *place_en]
    return english, ["est-ce", "que", *subject.french, be_fr, *place_fr], True


SENTENCE_FORMS: tuple[tuple[Callable[[random.Random], Sentence], int], ...] = (
    (_transitive, 30),
    (_negated, 12),
    (_yes_no, 12),
    (_what, 6),
    (_who, 6),
    (_attribute, 16),
    (_location, 18),
)


def _english_text(words: list[str], question: bool) -> str:
    words = [
        "an" if word == "a" and following[0] in "aeiou" else word
        for word, following in zip(words, [*words[1:], "."], strict=True)
    ]
    text = " ".join(words)
    return text[0].upper() + text[1:] + ("?" if question else ".")


def _french_text(words: list[str], question: bool) -> str:
    """Elisions (l'arbre, n'est, qu'il, d'œuf), then contractions (du, des), then the
    capital and the final mark: "?" after a space, as French typography has it."""
    elided: list[str] = []
    for word in words:
        if elided and elided[-1] in ELISIONS and _vowel(word):
            elided[-1] = ELISIONS[elided[-1]] + word
        else:
            elided.append(word)
    contracted: list[str] = []
    for word in elided:
        if contracted and (contracted[-1], word) in CONTRACTIONS:
            contracted[-1] = CONTRACTIONS[(contracted[-1], word)]
        else:
            contracted.append(word)
    text = " ".join(contracted)
    return text[0].upper() + text[1:] + (" ?" if question else ".")


def sentence_pairs(count: int, seed: int = SEED) -> list[tuple[str, str]]:
    """`count` (English, French) pairs drawn from the grammar, no English sentence twice."""
    rng = random.Random(seed)
    forms = [form for form, _ in SENTENCE_FORMS]
    weights = [weight for _, weight in SENTENCE_FORMS]
    pairs: dict[str, str] = {}
    while len(pairs) < count:
        english, french, question = rng.choices(forms, weights)[0](rng)
        pairs.setdefault(_english_text(english, question), _french_text(french, question))
    return list(pairs.items())


@dataclass(frozen=True)
class Splits:
    train: list[tuple[str, str]]
    calibration: list[tuple[str, str]]
    validation: list[tuple[str, str]]


def splits() -> Splits:
    pairs = sentence_pairs(CALIBRATION_SENTENCES + VALIDATION_SENTENCES + TRAIN_SENTENCES)
    held_out = CALIBRATION_SENTENCES + VALIDATION_SENTENCES
    return Splits(
        train=pairs[held_out:],
        calibration=pairs[:CALIBRATION_SENTENCES],
        validation=pairs[CALIBRATION_SENTENCES:held_out],
    )


# --- Tokenizer and model -----------------------------------------------------------------


def _pretokenised(backend: Any) -> Any:
    """`backend` with t5-small's text handling: its normaliser is sentencepiece's
    precompiled NFKC, its pre-tokeniser splits on whitespace and marks word starts with ▁,
    which its decoder turns back into spaces."""
    from tokenizers import decoders, normalizers, pre_tokenizers

    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Strip()])
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁")]
    )
    backend.decoder = decoders.Metaspace(replacement="▁")
    return backend


def _unigram_pieces(texts: list[str]) -> list[tuple[str, float]]:
    """Unigram pieces and their scores (log probabilities), in id order.

    Not from the `tokenizers` Unigram trainer: it is not deterministic (two runs on the
    same texts give different vocabularies, one thread or many). Its BPE trainer is: it
    picks the pieces, and each piece scores the log of its share of the pieces that BPE
    model cuts the training texts into, half a count for a piece it never emits (an
    intermediate merge, a character of ALPHABET the corpus lacks). The special tokens
    score 0, as in T5's own vocabulary.
    """
    from tokenizers import Tokenizer, models
    from tokenizers.trainers import BpeTrainer

    bpe = _pretokenised(Tokenizer(models.BPE(unk_token=UNK)))
    trainer = BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        # Every ASCII character and French letter, even those the corpus lacks (digits,
        # commas, À…), so that a user's text becomes pieces rather than <unk>.
        initial_alphabet=list(ALPHABET),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    counts = Counter(token for encoding in bpe.encode_batch(texts) for token in encoding.tokens)
    total = sum(counts.values())
    by_id = sorted(bpe.get_vocab().items(), key=lambda item: item[1])
    return [
        (piece, 0.0 if piece in SPECIAL_TOKENS else math.log((counts[piece] + 0.5) / total))
        for piece, _ in by_id
    ]


def _tokenizer(texts: list[str]) -> Any:
    """A T5TokenizerFast over a Unigram model of `texts`, built without a download."""
    from tokenizers import Tokenizer, models, processors
    from transformers import T5TokenizerFast

    pieces = _unigram_pieces(texts)
    if [piece for piece, _ in pieces[:3]] != list(SPECIAL_TOKENS):
        raise SystemExit(f"the vocabulary starts {pieces[:3]}, not with {SPECIAL_TOKENS}")
    backend = _pretokenised(Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False)))
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, 1)]
    )
    tokenizer = T5TokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        # No <extra_id_*> sentinels: they are for span-corruption pre-training, which this
        # model never saw, and they would add 100 untrained rows to the vocabulary.
        extra_ids=0,
        model_max_length=MAX_LENGTH,
    )
    ids = [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS]
    if ids != [0, 1, 2] or len(tokenizer) != len(pieces):
        raise SystemExit(f"special token ids {ids}, expected [0, 1, 2]")
    return tokenizer


def _build(tokenizer: Any) -> tuple[Any, Any]:
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    config = T5Config(  # type: ignore[no-untyped-call]
        vocab_size=len(tokenizer),
        d_model=128,
        d_ff=512,
        d_kv=32,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=MAX_LENGTH,
        feed_forward_proj="relu",
        dropout_rate=DROPOUT,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        # The translation pipeline reads its prefix here; inputs are plain English.
        task_specific_params={"translation_en_to_fr": {"prefix": ""}},
    )
    generation = GenerationConfig(  # type: ignore[no-untyped-call]
        decoder_start_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_length=MAX_LENGTH,
        num_beams=1,
        do_sample=False,
    )
    return T5ForConditionalGeneration(config), generation


def _encode(tokenizer: Any, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    sources = tokenizer([english for english, _ in pairs])["input_ids"]
    targets = tokenizer([french for _, french in pairs])["input_ids"]
    for ids in (*sources, *targets):
        if tokenizer.unk_token_id in ids:
            raise SystemExit("a training sentence has a character outside the vocabulary")
    return list(zip(sources, targets, strict=True))


def _batch(
    encoded: list[tuple[list[int], list[int]]], indices: list[int]
) -> dict[str, torch.Tensor]:
    """Padded inputs and labels (padding labelled -100, which the loss ignores)."""
    import torch

    sources = [encoded[i][0] for i in indices]
    targets = [encoded[i][1] for i in indices]
    width = max(map(len, sources))
    label_width = max(map(len, targets))
    input_ids = torch.tensor([ids + [0] * (width - len(ids)) for ids in sources])
    labels = torch.tensor([ids + [-100] * (label_width - len(ids)) for ids in targets])
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(), "labels": labels}


def _batches(encoded: list[tuple[list[int], list[int]]], generator: Any) -> list[list[int]]:
    """One epoch of batches: shuffled, then sorted by length within pools of POOL_BATCHES
    batches, so that a batch holds sentences of about one length and pads little (half the
    time of random batches), and the batches shuffled again."""
    import torch

    lengths = [len(source) + len(target) for source, target in encoded]
    order = torch.randperm(len(encoded), generator=generator).tolist()
    pool = BATCH_SIZE * POOL_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        ranked = sorted(order[start : start + pool], key=lambda index: lengths[index])
        batches += [
            ranked[i : i + BATCH_SIZE] for i in range(0, len(ranked) - BATCH_SIZE + 1, BATCH_SIZE)
        ]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _train(model: Any, encoded: list[tuple[list[int], list[int]]]) -> None:
    import torch

    generator = torch.Generator().manual_seed(SEED)
    # No weight decay on the layer norms' gains.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0}],
        lr=LEARNING_RATE,
        betas=(0.9, BETA2),
    )

    def rate(step: int) -> float:  # linear warm-up, then cosine down to zero
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        progress = (step - WARMUP_STEPS) / max(1, STEPS - WARMUP_STEPS)
        return 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    model.train()
    batches: list[list[int]] = []
    started = time.perf_counter()
    for step in range(STEPS):
        if not batches:
            batches = _batches(encoded, generator)
        loss = model(**_batch(encoded, batches.pop())).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == STEPS - 1:
            print(
                f"  step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - started:.0f} s",
                flush=True,
            )


def translate(model: Any, tokenizer: Any, sentences: list[str]) -> list[str]:
    """Greedy translations, as the generation config has it."""
    import torch

    model.eval()
    out: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(sentences), 64):
            inputs = tokenizer(sentences[start : start + 64], padding=True, return_tensors="pt")
            generated = model.generate(**inputs)
            out += tokenizer.batch_decode(generated, skip_special_tokens=True)
    return out


def chrf(hypotheses: Sequence[str], references: Sequence[str], order: int = 6) -> float:
    """Corpus chrF (β = 2) as sacrebleu computes it by default: character n-grams of
    orders 1…6 with whitespace removed, counts summed over the corpus, precision and recall
    averaged over the orders both sides have, then their F-score, × 100."""
    totals = [[0, 0, 0] for _ in range(order)]  # hypothesis, reference, common n-grams
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
        for n in range(1, order + 1):
            hyp_grams = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
            ref_grams = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
            totals[n - 1][0] += sum(hyp_grams.values())
            totals[n - 1][1] += sum(ref_grams.values())
            totals[n - 1][2] += sum((hyp_grams & ref_grams).values())
    effective = [(common, h, r) for h, r, common in totals if h > 0 and r > 0]
    if not effective:
        return 0.0
    precision = sum(common / h for common, h, _ in effective) / len(effective)
    recall = sum(common / r for common, _, r in effective) / len(effective)
    if precision + recall == 0:
        return 0.0
    beta_square = 2.0**2
    return 100 * (1 + beta_square) * precision * recall / (beta_square * precision + recall)


# --- Writing and checking ----------------------------------------------------------------


def _swap_in(folder: Path, write: Callable[[Path], None]) -> None:
    # Written next to the target and swapped in, so an interrupted run never leaves a
    # half-written folder behind, nor files of an older run beside the new ones.
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(staging)
        # mkdtemp makes a private folder: the files are meant to be shared.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_samples(folder: Path, data: Splits) -> None:
    def write(staging: Path) -> None:
        for name, lines in (
            ("calibration.txt", [english for english, _ in data.calibration]),
            ("validation.txt", [english for english, _ in data.validation]),
            ("validation.fr.txt", [french for _, french in data.validation]),
        ):
            (staging / name).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    _swap_in(folder, write)


def _write_model(folder: Path, model: Any, generation: Any, tokenizer: Any) -> None:
    def write(staging: Path) -> None:
        model.generation_config = generation
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        # save_pretrained leaves out values equal to the defaults; a reader of the file
        # (and a converter) should still find that decoding is greedy.
        path = staging / "generation_config.json"
        written = json.loads(path.read_text(encoding="utf-8"))
        written = {**written, "do_sample": False, "num_beams": 1}
        path.write_text(json.dumps(written, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    _swap_in(folder, write)


def _check_reload(folder: Path, sentences: list[str], expected: list[str]) -> None:
    """The folder loads through the Auto classes, optimum's TasksManager and the
    translation pipeline, and translates as the trained model did."""
    from optimum.exporters.tasks import TasksManager
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5TokenizerFast, pipeline

    tokenizer = AutoTokenizer.from_pretrained(folder)  # type: ignore[no-untyped-call]
    if not isinstance(tokenizer, T5TokenizerFast):
        raise SystemExit(f"{folder}: AutoTokenizer loads a {type(tokenizer).__name__}")
    accented = "Où est le vieil homme ? Je préfère ce gâteau, à côté de l'œuf et du garçon !"
    decoded = tokenizer.decode(tokenizer(accented)["input_ids"], skip_special_tokens=True)
    if decoded != accented:
        raise SystemExit(f"{folder}: the tokenizer does not round-trip: {decoded!r}")
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    if translate(model, tokenizer, sentences) != expected:
        raise SystemExit(f"{folder}: AutoModelForSeq2SeqLM translates differently")
    exported = TasksManager.get_model_from_task(
        "text2text-generation", str(folder), library_name="transformers"
    )
    if translate(exported, tokenizer, sentences) != expected:
        raise SystemExit(f"{folder}: the model loaded by TasksManager translates differently")
    # (The stubs know the task "translation" but not "translation_en_to_fr".)
    translation = pipeline("translation_en_to_fr", model=str(folder))  # type: ignore[call-overload]
    translators = (
        ("translation_en_to_fr", translation),
        ("text2text-generation", pipeline("text2text-generation", model=str(folder))),
    )
    for task, translator in translators:
        # These pipelines search with 4 beams unless told otherwise, whatever the model's
        # generation config says.
        results = translator(sentences, num_beams=1)
        got = [next(iter(result.values())) for result in results]
        if got != expected:
            raise SystemExit(f"{folder}: pipeline({task!r}) translates differently: {got}")


def _exact_match(translations: Sequence[str], pairs: Sequence[tuple[str, str]]) -> float:
    matches = sum(t == french for t, (_, french) in zip(translations, pairs, strict=True))
    return matches / len(pairs)


def _confidence(model: Any, tokenizer: Any, sentences: list[str]) -> tuple[float, float]:
    """(mean, lowest) probability the model gives the token it picks, over every greedy
    step of `sentences`, </s> included: how far the weights are from a near tie that
    rounding could flip."""
    import torch

    model.eval()
    picked: list[torch.Tensor] = []
    with torch.inference_mode():
        inputs = tokenizer(sentences, padding=True, return_tensors="pt")
        output = model.generate(**inputs, output_scores=True, return_dict_in_generate=True)
        tokens = output.sequences[:, 1:]
        for step, scores in enumerate(output.scores):
            live = tokens[:, step] != tokenizer.pad_token_id
            probabilities = torch.softmax(scores.float(), dim=-1).max(dim=-1).values
            picked.append(probabilities[live])
    every = torch.cat(picked)
    return float(every.mean()), float(every.min())


def run(out: Path) -> dict[str, float]:
    import torch

    started = time.perf_counter()
    cpu_started = time.process_time()
    torch.manual_seed(SEED)
    data = splits()
    held_out = {english for english, _ in data.calibration + data.validation}
    if held_out & {english for english, _ in data.train}:
        raise SystemExit("a held-out sentence is also a training sentence")
    tokenizer = _tokenizer([text for pair in data.train for text in pair])
    model, generation = _build(tokenizer)
    model.generation_config = generation
    encoded = _encode(tokenizer, data.train)
    longest = max(max(len(source), len(target)) for source, target in encoded)
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"{NAME}: {parameters:,} parameters, {len(tokenizer)} tokens, "
        f"{len(data.train):,} training pairs (longest {longest} tokens)",
        flush=True,
    )

    training_started = time.perf_counter()
    _train(model, encoded)
    training_seconds = time.perf_counter() - training_started
    sources = [english for english, _ in data.validation]
    references = [french for _, french in data.validation]
    translations = translate(model, tokenizer, sources)
    exact = _exact_match(translations, data.validation)
    score = chrf(translations, references)
    calibration_exact = _exact_match(
        translate(model, tokenizer, [english for english, _ in data.calibration]), data.calibration
    )
    train_sample = data.train[:VALIDATION_SENTENCES]
    train_exact = _exact_match(
        translate(model, tokenizer, [english for english, _ in train_sample]), train_sample
    )
    mean_confidence, lowest_confidence = _confidence(model, tokenizer, sources)
    for source, translation, reference in zip(sources, translations, references, strict=True):
        if translation != reference:
            print(f"  {source}\n    got  {translation}\n    want {reference}")
    if exact < MIN_EXACT_MATCH:
        raise SystemExit(f"exact match {exact:.1%} is below {MIN_EXACT_MATCH:.0%}, nothing written")

    _write_samples(out / SAMPLES_NAME, data)
    folder = out / NAME
    _write_model(folder, model, generation, tokenizer)
    _check_reload(folder, sources[:16], translations[:16])
    weight_bytes = (folder / "model.safetensors").stat().st_size
    if weight_bytes > MAX_WEIGHT_BYTES:
        raise SystemExit(f"{folder}: {weight_bytes:,} bytes of weights, over {MAX_WEIGHT_BYTES:,}")
    result = {
        "exact_match": exact,
        "chrf": score,
        "calibration_exact_match": calibration_exact,
        "train_exact_match": train_exact,
        "mean_confidence": mean_confidence,
        "lowest_confidence": lowest_confidence,
        "parameters": float(parameters),
        "weight_bytes": float(weight_bytes),
        "training_seconds": training_seconds,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
    }
    print(
        f"{NAME}: {parameters:,} parameters, {weight_bytes / 1e6:.2f} MB of weights; "
        f"validation ({len(sources)} sentences): exact match {exact:.1%}, chrF {score:.1f}; "
        f"calibration exact match {calibration_exact:.1%}, training sentences "
        f"{train_exact:.1%}; greedy token probability mean {mean_confidence:.3f}, lowest "
        f"{lowest_confidence:.3f}; {result['seconds']:.0f} s "
        f"({result['cpu_seconds']:.0f} CPU s, training {training_seconds:.0f} s) -> {folder}",
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
