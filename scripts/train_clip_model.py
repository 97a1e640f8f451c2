"""Train the tiny CLIP model of examples/vision/tiny-clip/ from scratch, deterministically.

A real `CLIPModel` (image tower and text tower) small enough to commit, whose weights
really learned something, for testing zero-shot image classification: quantising it shows
the accuracy loss a real CLIP shows, which random weights cannot. The images are the
crops of ten of scikit-image's photographs that the tiny classifiers of
scripts/train_vision_models.py learn from (edgeport.image_samples); the captions name the
photograph ("This is a photo of coffee.", "a picture of the bricks.", ...).

    python scripts/train_clip_model.py examples/vision

writes examples/vision/tiny-clip/: config.json, model.safetensors,
preprocessor_config.json (a slow CLIPImageProcessor: short side to 64 pixels, centre
crop 64×64) and a fast tokenizer (tokenizer.json, tokenizer_config.json,
special_tokens_map.json). The tokenizer is built here with the `tokenizers` library, no
download: whole lower-cased words (a WordLevel vocabulary of the label words, the caption
words and a few hundred common English nouns and adjectives), split on whitespace and
punctuation, wrapped in <|startoftext|> … <|endoftext|> and padded with <|endoftext|>,
as CLIP's own tokenizer does. Words outside the vocabulary become <|unk|>.

Training crops come from the left 60 % of each photograph, the zero-shot accuracy printed
is on crops of the right 40 % (bottom half), which no training crop overlaps, with the
prompts "This is a photo of {label}." (the zero-shot pipeline's default template) for
the ten labels. Images are preprocessed by the model's own (slow, PIL-based) image
processor and captions by its tokenizer, exactly as at inference.

The loss is CLIP's contrastive loss made aware of classes: a batch of crops holds
several crops of each photograph, so its captions cannot be one per crop (two crops of
the cat would each count the other's caption as a wrong match). Each step instead
captions the ten classes, each with a template drawn at random, and scores every crop
against the ten captions (cross-entropy on the crop's class) and every caption against
the crops (cross-entropy spread evenly over the crops of its class).

Seeds are fixed, algorithms deterministic and two threads used: a rerun on the same
machine and library versions writes identical weights. Another CPU may round float sums
differently and so end with slightly different weights.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The same folder, seed, threads and image preprocessing as the tiny classifiers.
from train_vision_models import DEFAULT_OUT, SEED, THREADS, processed_pixels

if TYPE_CHECKING:
    import torch
    from PIL import Image

NAME = "tiny-clip"
# Training crops, preprocessed once and then seen for several epochs (see
# train_vision_models.py): fresh crops every epoch would spend the time on PIL.
TRAIN_CROPS = 10000
# Held-out crops for the accuracy printed (balanced: the ten classes in turn).
TEST_CROPS = 400
STEPS = 1500
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.05
LABEL_SMOOTHING = 0.1
MAX_FOLDER_BYTES = 3_000_000
IMAGE_SIZE = 64
PROJECTION_DIM = 32
# Tokens per caption, <|startoftext|> and <|endoftext|> included: the text tower's
# max_position_embeddings and the tokenizer's model_max_length.
MAX_TOKENS = 16
# CLIP clamps its learned temperature so that logits stay below 100 × cosine.
MAX_LOGIT_SCALE = math.log(100.0)

# The zero-shot pipeline's default template, the one the printed accuracy uses.
PROMPT = "This is a photo of {}."
# Caption templates drawn from during training: PROMPT, some of CLIP's ImageNet prompts
# and the bare label, so the text tower learns the label words rather than one sentence.
TEMPLATES = (
    PROMPT,
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of {}.",
    "a picture of the {}.",
    "a picture of {}.",
    "an image of {}.",
    "an image of the {}.",
    "a close-up photo of the {}.",
    "a cropped photo of a {}.",
    "a blurry photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a good photo of the {}.",
    "a photo of my {}.",
    "this is a picture of {}.",
    "{}",
    "{}.",
)

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
UNK = "<|unk|>"
# Ids 0, 1, 2. The end token must not be id 2: CLIPTextTransformer then falls back to
# the original checkpoints' pooling (the position of the largest id), where any other
# id pools the first <|endoftext|>, which is what padding with it needs. And no id may
# equal CLIPTextConfig's default for it (pad 1): config.json leaves defaults out, and a
# reader of the file should find all three ids there.
SPECIAL_TOKENS = (EOS, BOS, UNK)
PUNCTUATION = tuple(".,!?;:'\"-()&/")
# Common English nouns and adjectives, so that most labels a user tries tokenise to
# known words. Only the photographs' labels are trained; other words keep their random
# embeddings, which still give distinct (if meaningless) text embeddings.
COMMON_WORDS = """
a an the this that these those is are was my your its of in on at with and or for from
to by some one two three four five many few no not very
photo photograph picture image images pic snapshot drawing painting sketch render
close up closeup cropped blurry bright dark good bad nice small large big tiny huge
little old new young clean dirty clear plain close far detailed rough smooth soft hard
hot cold warm cool wet dry empty full heavy light long short tall wide narrow thick thin
round square flat sharp shiny dull pretty beautiful ugly strange simple fancy fresh
black white grey gray red green blue yellow orange purple pink brown golden silver
colourful colorful dotted striped spotted
person people man woman men women child children boy girl baby face eye eyes hand
hands head hair body skin teeth smile portrait crowd family friend doctor pilot
astronaut astronauts spacesuit space suit helmet flag nasa moon sun star stars sky
cloud clouds planet planets galaxy galaxies universe cosmos telescope hubble night
rocket rockets launch shuttle spacecraft satellite missile smoke fire flame flames
cat cats kitten kitty dog dogs puppy animal animals pet pets bird birds fish horse
cow pig sheep goat chicken duck mouse rabbit lion tiger bear elephant monkey zebra
giraffe deer fox wolf snake frog insect bug butterfly bee spider fur whiskers tail
coffee cup mug tea drink drinks espresso latte cappuccino milk foam saucer spoon
plate bowl glass bottle table kitchen food bread cake pizza fruit apple banana
orange sandwich breakfast dinner lunch sugar water wine beer juice
retina retinal fundus eyeball vessel vessels blood artery medical scan xray x ray
tissue tissues cell cells biology microscope microscopy slide stain stained sample
histology cancer tumour tumor organ lab science
motorcycle motorcycles motorbike bike bikes bicycle car cars truck bus train plane
airplane boat ship vehicle vehicles wheel wheels engine road street traffic
coin coins money cash penny pennies dollar metal gold copper bronze
brick bricks wall walls stone stones rock rocks tile tiles concrete wood wooden
house building buildings roof door window city town tower bridge church castle
tree trees flower flowers grass leaf leaves plant plants forest garden field park
mountain mountains hill river lake sea ocean beach sand snow ice rain desert island
texture pattern noise background object objects thing things shape shapes line lines
circle pattern surface material fabric cloth paper book books text letter letters
word words page sign logo clock watch phone computer screen camera lamp chair sofa
bed desk box bag ball toy toys game shoe shoes hat shirt dress jacket
"""


def _vocabulary() -> dict[str, int]:
    """Token → id: the special tokens, then every other word and mark once, contiguous."""
    from edgeport.image_samples import photograph_labels

    words = [*PUNCTUATION, *COMMON_WORDS.split(), *photograph_labels()]
    for template in TEMPLATES:
        words += template.replace("{}", " ").replace("-", " - ").replace(".", " . ").split()
    vocabulary = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted({word.lower() for word in words}):
        vocabulary[word] = len(vocabulary)
    return vocabulary


def _tokenizer() -> Any:
    """A PreTrainedTokenizerFast over a WordLevel vocabulary, built without a download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocabulary = _vocabulary()
    backend = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token=UNK))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocabulary[BOS]), (EOS, vocabulary[EOS])],
    )
    backend.enable_padding(pad_id=vocabulary[EOS], pad_token=EOS)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=UNK,
        model_max_length=MAX_TOKENS,
        # CLIP's text tower takes no token_type_ids (the zero-shot pipeline passes the
        # tokenizer's whole output to the model).
        model_input_names=["input_ids", "attention_mask"],
    )


def _build(tokenizer: Any) -> tuple[Any, Any]:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_TOKENS,
        "projection_dim": PROJECTION_DIM,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {
        "image_size": IMAGE_SIZE,
        "patch_size": 8,
        "hidden_size": 96,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "projection_dim": PROJECTION_DIM,
    }
    config = CLIPConfig(  # type: ignore[no-untyped-call]
        text_config=text_config, vision_config=vision_config, projection_dim=PROJECTION_DIM
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return CLIPModel(config), processor


def _captions(tokenizer: Any, labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of every template × label, shaped [templates, labels, L]."""
    texts = [template.format(label) for template in TEMPLATES for label in labels]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    if (encoded["input_ids"] == tokenizer.unk_token_id).any():
        raise SystemExit("a training caption has a word outside the vocabulary")
    shape = (len(TEMPLATES), len(labels), -1)
    return encoded["input_ids"].reshape(shape), encoded["attention_mask"].reshape(shape)


def _predict(model: Any, tokenizer: Any, labels: list[str], pixels: torch.Tensor) -> torch.Tensor:
    """Zero-shot class indices with the prompts PROMPT.format(label)."""
    import torch

    text = tokenizer([PROMPT.format(label) for label in labels], padding=True, return_tensors="pt")
    model.eval()
    with torch.inference_mode():
        return torch.cat(
            [
                model(**text, pixel_values=pixels[i : i + 256]).logits_per_image.argmax(-1)
                for i in range(0, len(pixels), 256)
            ]
        )


def _accuracy(
    model: Any, tokenizer: Any, labels: list[str], pixels: torch.Tensor, targets: torch.Tensor
) -> float:
    return float((_predict(model, tokenizer, labels, pixels) == targets).float().mean())


def _loss(model: Any, pixels: torch.Tensor, targets: torch.Tensor, text: dict[str, Any]) -> Any:
    """Class-aware CLIP loss of a batch of crops against one caption per class."""
    import torch
    from torch.nn import functional

    output = model(**text, pixel_values=pixels)
    # Crop → captions: which of the ten captions is this crop's class.
    image_loss = functional.cross_entropy(
        output.logits_per_image, targets, label_smoothing=LABEL_SMOOTHING
    )
    # Caption → crops: every crop of the caption's class is a right answer, equally.
    classes = output.logits_per_text.shape[0]
    positives = functional.one_hot(targets, classes).T.float()
    present = positives.sum(1) > 0
    spread = positives[present] / positives[present].sum(1, keepdim=True)
    log_probabilities = torch.log_softmax(output.logits_per_text[present], dim=1)
    text_loss = -(spread * log_probabilities).sum(1).mean()
    return (image_loss + text_loss) / 2


def _train(
    model: Any,
    pixels: torch.Tensor,
    targets: torch.Tensor,
    captions: tuple[torch.Tensor, torch.Tensor],
) -> None:
    import torch

    generator = torch.Generator().manual_seed(SEED)
    # No weight decay on biases, norms' gains and the temperature: decay would pull the
    # learned logit scale towards 1.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0}],
        lr=LEARNING_RATE,
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=STEPS, pct_start=0.1
    )
    input_ids, attention_mask = captions
    templates, classes = input_ids.shape[:2]
    model.train()
    order = torch.randperm(len(pixels), generator=generator)
    position = 0
    for step in range(STEPS):
        if position + BATCH_SIZE > len(order):
            order = torch.randperm(len(pixels), generator=generator)
            position = 0
        batch = order[position : position + BATCH_SIZE]
        position += BATCH_SIZE
        # One caption per class, each with its own template: the text tower has to
        # match "a photo of a cat." against "bricks" as well as against "a photo of a
        # bricks.", so it learns the label words, not the templates.
        template = torch.randint(templates, (classes,), generator=generator)
        text = {
            "input_ids": input_ids[template, torch.arange(classes)],
            "attention_mask": attention_mask[template, torch.arange(classes)],
        }
        loss = _loss(model, pixels[batch], targets[batch], text)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        if step % 100 == 0 or step == STEPS - 1:
            print(
                f"  step {step:4d}  loss {loss.item():.3f}  "
                f"logit scale {model.logit_scale.exp().item():.1f}",
                flush=True,
            )


def _write(model: Any, processor: Any, tokenizer: Any, folder: Path) -> None:
    # Written next to the target and swapped in, so an interrupted run never leaves a
    # half-written model folder behind, nor files of an older run beside the new ones.
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
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
    folder: Path, model: Any, tokenizer: Any, labels: list[str], images: list[Image.Image]
) -> None:
    """The folder loads through the Auto classes, optimum's TasksManager and the
    zero-shot pipeline, and gives the trained model's logits and predictions."""
    import torch
    from optimum.exporters.tasks import TasksManager
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, pipeline

    written = json.loads((folder / "config.json").read_text())["text_config"]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if written.get(key) != getattr(tokenizer, key):
            raise SystemExit(f"{folder}: config.json's text_config lacks {key}")
    texts = [PROMPT.format(label) for label in labels]
    reloaded_tokenizer = AutoTokenizer.from_pretrained(folder)  # type: ignore[no-untyped-call]
    expected_text = tokenizer(texts, padding=True, return_tensors="pt")
    text = reloaded_tokenizer(texts, padding=True, return_tensors="pt")
    if not torch.equal(expected_text["input_ids"], text["input_ids"]):
        raise SystemExit(f"{folder}: the reloaded tokenizer disagrees with the built one")
    processor = AutoImageProcessor.from_pretrained(  # type: ignore[no-untyped-call]
        folder, use_fast=False
    )
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]

    reloaded = AutoModel.from_pretrained(folder).eval()
    exported = TasksManager.get_model_from_task(
        "zero-shot-image-classification", str(folder), library_name="transformers"
    ).eval()
    model.eval()
    with torch.inference_mode():
        expected = model(**text, pixel_values=pixels).logits_per_image
        for name, candidate in (("AutoModel", reloaded), ("TasksManager", exported)):
            got = candidate(**text, pixel_values=pixels).logits_per_image
            if not torch.allclose(expected, got, atol=1e-5):
                raise SystemExit(f"{folder}: the model loaded by {name} disagrees")

    classifier = pipeline("zero-shot-image-classification", model=str(folder))
    for image, logits in zip(images, expected, strict=True):
        best = classifier(image, candidate_labels=labels)[0]["label"]
        if best != labels[int(logits.argmax())]:
            raise SystemExit(f"{folder}: the zero-shot pipeline disagrees with the model")


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())


def run(out: Path) -> dict[str, float]:
    import torch

    from edgeport.image_samples import (
        labelled_heldout_crops,
        labelled_training_crops,
        photograph_labels,
    )

    started = time.perf_counter()
    cpu_started = time.process_time()
    torch.manual_seed(SEED)
    labels = photograph_labels()
    tokenizer = _tokenizer()
    model, processor = _build(tokenizer)

    train = labelled_training_crops(TRAIN_CROPS, seed=SEED)
    train_pixels = processed_pixels(processor, [image for image, _ in train])
    train_targets = torch.tensor([label for _, label in train])
    del train  # the crops, some of whole regions, take gigabytes once preprocessed
    test = labelled_heldout_crops("validation", TEST_CROPS)
    test_pixels = processed_pixels(processor, [image for image, _ in test])
    test_targets = torch.tensor([label for _, label in test])
    print(
        f"{NAME}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(tokenizer)} tokens, {time.perf_counter() - started:.0f} s preprocessing",
        flush=True,
    )

    _train(model, train_pixels, train_targets, _captions(tokenizer, labels))
    accuracy = _accuracy(model, tokenizer, labels, test_pixels, test_targets)
    train_accuracy = _accuracy(
        model, tokenizer, labels, train_pixels[:TEST_CROPS], train_targets[:TEST_CROPS]
    )

    folder = out / NAME
    _write(model, processor, tokenizer, folder)
    _check_reload(folder, model, tokenizer, labels, [image for image, _ in test[:8]])
    size = _folder_bytes(folder)
    if size > MAX_FOLDER_BYTES:
        raise SystemExit(f"{folder}: {size:,} bytes, over {MAX_FOLDER_BYTES:,}")
    result = {
        "accuracy": accuracy,
        "train_accuracy": train_accuracy,
        "bytes": float(size),
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "logit_scale": model.logit_scale.exp().item(),
    }
    print(
        f"{NAME}: held-out zero-shot top-1 {accuracy:.1%} with {PROMPT!r} "
        f"(training crops {train_accuracy:.1%}, chance {1 / len(labels):.0%}), "
        f"logit scale {result['logit_scale']:.1f}, {size / 1e6:.2f} MB, "
        f"{result['seconds']:.0f} s ({result['cpu_seconds']:.0f} CPU s) -> {folder}",
        flush=True,
    )
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
