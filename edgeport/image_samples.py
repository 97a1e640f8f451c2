"""Real photographs for calibrating and validating vision models, with no download.

The pictures are crops of the photographs that ship inside scikit-image's wheel
(``skimage/data``): they are read from that folder with Pillow, and scikit-image's
fetchers, which may download, are never called. Only files present on disk are used.

Every photograph is cut into three regions that share no pixel:

    +----------------------+--------------+
    |                      | calibration  |  right 40 %, top half
    |  training            +--------------+
    |  (left 60 %)         | validation   |  right 40 %, bottom half
    +----------------------+--------------+

Calibration crops come only from the calibration region, validation crops only from the
validation region and training crops (`builtin_images("training")`,
`labelled_training_crops`) only from the training region. That is what makes the splits
disjoint: not merely different random boxes, but boxes that cannot overlap, so a model
trained on the training crops and judged on the validation crops has never seen a pixel
of what judges it.

Crops are deterministic: each one is drawn from its own `random.Random` seeded with a
string naming the split, the photograph and the crop's number. Python guarantees that
`Random.random()` yields the same sequence for the same seed on every version and
machine, and only `random()` is used (no `randint`, whose algorithm may change). The
pixels are then identical wherever Pillow decodes the files and resamples the same way
(one Pillow release with its bundled libjpeg/zlib).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from edgeport.errors import BadInputError, UnsupportedError

if TYPE_CHECKING:
    from PIL import Image

Split = Literal["calibration", "validation", "training"]
HeldOutSplit = Literal["calibration", "validation"]
Box = tuple[int, int, int, int]

DEFAULT_COUNTS: dict[str, int] = {"calibration": 32, "validation": 64}
# The share of each photograph's width kept for training; the rest is held out.
TRAINING_FRACTION = 0.6
# The smallest crop side: smaller crops of a textured photograph say little about it.
MIN_SIDE = 48
# A resized crop keeps at least this side (processors must still upscale it) and at
# most this one (larger than any processor's input, small enough to stay quick).
MIN_RESIZED_SIDE = 32
MAX_RESIZED_SIDE = 1024
# One crop in ten is its whole region, so the largest inputs are represented too.
WHOLE_REGION_CHANCE = 0.1
# A third of the crops are resized, so processors see up- and down-scaling artefacts.
RESIZE_CHANCE = 1 / 3
# Width:height between 1:2 and 2:1.
MAX_ASPECT = 2.0
# A user's picture above this is refused before it is decoded: 40 megapixels is more
# than any camera-phone photo needs and a decoded 8-bit RGB copy is already 120 MB.
MAX_USER_PIXELS = 40_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")

T = TypeVar("T")


@dataclass(frozen=True)
class Photograph:
    file: str
    # The class name in the training task, or None for a photograph used only for
    # calibration and validation crops.
    label: str | None = None


# Photographs, not synthetic pictures (chessboard, phantom, logo, colour wheel, the horse
# silhouette), and not motorcycle_right.png: it is the stereo twin of motorcycle_left.png,
# so its held-out region shows what the left one's training region shows. The labelled
# ones are visually distinct, so "which photograph is this crop from" is learnable.
PHOTOGRAPHS: tuple[Photograph, ...] = (
    Photograph("astronaut.png", "astronaut"),
    Photograph("chelsea.png", "cat"),
    Photograph("coffee.png", "coffee"),
    Photograph("rocket.jpg", "rocket"),
    Photograph("hubble_deep_field.jpg", "galaxies"),
    Photograph("retina.jpg", "retina"),
    Photograph("motorcycle_left.png", "motorcycle"),
    Photograph("ihc.png", "tissue"),
    Photograph("coins.png", "coins"),
    Photograph("brick.png", "bricks"),
    Photograph("camera.png"),
    Photograph("moon.png"),
    Photograph("grass.png"),
    Photograph("gravel.png"),
    Photograph("page.png"),
    Photograph("text.png"),
    Photograph("cell.png"),
    Photograph("clock_motion.png"),
)
LABELLED: tuple[Photograph, ...] = tuple(p for p in PHOTOGRAPHS if p.label is not None)


@dataclass(frozen=True)
class CropPlan:
    """Where one crop comes from and what is done to it; rendered by `render`."""

    photograph: Photograph
    box: Box  # (left, top, right, bottom) in the photograph, right and bottom exclusive
    resize: tuple[int, int] | None
    flip: bool


def _data_dir() -> Path:
    # find_spec locates the folder without importing skimage.data, whose import would
    # pull in its fetchers (and pooch) for nothing.
    try:
        spec = importlib.util.find_spec("skimage.data")
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        raise UnsupportedError(
            "the built-in images are photographs shipped with scikit-image: "
            "pip install scikit-image, or pass --samples DIR"
        )
    return Path(spec.origin).parent


@functools.cache
def available_photographs() -> tuple[Photograph, ...]:
    """The photographs of PHOTOGRAPHS whose files are present, in PHOTOGRAPHS' order."""
    folder = _data_dir()
    present = tuple(p for p in PHOTOGRAPHS if (folder / p.file).is_file())
    if not present:
        raise UnsupportedError(f"{folder}: none of scikit-image's sample photographs is there")
    return present


@functools.cache
def _photo(file: str) -> Image.Image:
    """The decoded RGB photograph, kept for the process: about 15 MB for all of them,
    and crops are drawn thousands of times when training."""
    from PIL import Image

    with Image.open(_data_dir() / file) as image:
        # Grey photographs become three equal channels, as a colour model expects.
        return image.convert("RGB")


def region(size: tuple[int, int], split: Split) -> Box:
    """The part of a photograph of `size` (width, height) that `split` may crop from."""
    width, height = size
    split_x = round(width * TRAINING_FRACTION)
    if split == "training":
        return (0, 0, split_x, height)
    half = height // 2
    if split == "calibration":
        return (split_x, 0, width, half)
    return (split_x, half, width, height)


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(math.log(low) + rng.random() * (math.log(high) - math.log(low)))


def _below(rng: random.Random, bound: int) -> int:
    """An integer in [0, bound) from `random()` alone, whose sequence Python guarantees."""
    return min(bound - 1, math.floor(rng.random() * bound))


def _random_crop(
    rng: random.Random, area: Box, flips: bool
) -> tuple[Box, tuple[int, int] | None, bool]:
    x0, y0, x1, y1 = area
    width, height = x1 - x0, y1 - y0
    if rng.random() < WHOLE_REGION_CHANCE:
        # The whole region, or its widest (tallest) part within the aspect-ratio range:
        # text.png's held-out regions are 179×86.
        crop_w = min(width, math.floor(height * MAX_ASPECT))
        crop_h = min(height, math.floor(width * MAX_ASPECT))
    else:
        ratio = _log_uniform(rng, 1 / MAX_ASPECT, MAX_ASPECT)  # width / height
        root = math.sqrt(ratio)
        # `side` is the geometric mean of the crop's sides: the largest that fits this
        # ratio, and the smallest that keeps both sides at MIN_SIDE.
        largest = min(width / root, height * root)
        smallest = min(largest, MIN_SIDE * max(root, 1 / root))
        side = _log_uniform(rng, smallest, largest)
        crop_w = min(width, max(MIN_SIDE, round(side * root)))
        crop_h = min(height, max(MIN_SIDE, round(side / root)))
    left = x0 + _below(rng, width - crop_w + 1)
    top = y0 + _below(rng, height - crop_h + 1)
    resize: tuple[int, int] | None = None
    if rng.random() < RESIZE_CHANCE:
        low = max(0.5, MIN_RESIZED_SIDE / min(crop_w, crop_h))
        high = max(low, min(2.0, MAX_RESIZED_SIDE / max(crop_w, crop_h)))
        scale = _log_uniform(rng, low, high)
        resize = (max(1, round(crop_w * scale)), max(1, round(crop_h * scale)))
    flip = flips and rng.random() < 0.5
    return (left, top, left + crop_w, top + crop_h), resize, flip


def crop_plan(
    split: Split,
    count: int,
    photographs: Sequence[Photograph],
    seed: str = "",
    flips: bool = False,
) -> list[CropPlan]:
    """`count` crops of `split`'s regions, taken from `photographs` in turn.

    Crop k of a photograph depends only on (split, seed, photograph, k): asking for more
    crops, or for fewer photographs, leaves the crops already drawn unchanged.
    """
    if count < 0:
        raise ValueError(f"count must be at least 0, not {count}")
    plans: list[CropPlan] = []
    for index in range(count):
        photograph = photographs[index % len(photographs)]
        rank = index // len(photographs)
        # A string seed is hashed with SHA-512 by Random: stable on every platform.
        rng = random.Random(f"{split}:{seed}:{photograph.file}:{rank}")
        area = region(_photo(photograph.file).size, split)
        box, resize, flip = _random_crop(rng, area, flips)
        plans.append(CropPlan(photograph, box, resize, flip))
    return plans


def render(plan: CropPlan) -> Image.Image:
    from PIL import Image

    image = _photo(plan.photograph.file).crop(plan.box)
    if plan.resize is not None:
        image = image.resize(plan.resize, Image.Resampling.BICUBIC)
    if plan.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def builtin_images(split: Split, count: int | None = None) -> list[Image.Image]:
    """Deterministic RGB crops of scikit-image's photographs for one split.

    Crops range from MIN_SIDE (48) pixels to a whole region (up to 564×705 pixels for
    retina.jpg's held-out regions, 847×1411 for its training region), with aspect ratios
    from 1:2 to 2:1; a third are then resized by 0.5× to 2× (each side staying within
    32 to 1024 pixels). Photographs are taken in turn, so every one appears once
    `count` reaches their number. `count` defaults to 32 for calibration and 64 for
    validation; training crops (horizontally flipped at random) need an explicit count.

    The splits are disjoint because each crops only its own region of a photograph (see
    the module docstring): calibration and validation use the top and bottom halves of
    the right 40 %, training the left 60 %.
    """
    if count is None:
        if split not in DEFAULT_COUNTS:
            raise ValueError(f"builtin_images({split!r}) needs a count")
        count = DEFAULT_COUNTS[split]
    plans = crop_plan(split, count, available_photographs(), flips=split == "training")
    return [render(plan) for plan in plans]


def describe_builtin() -> str:
    photographs = available_photographs()
    names = ", ".join(Path(p.file).stem for p in photographs)
    calibration, validation = DEFAULT_COUNTS["calibration"], DEFAULT_COUNTS["validation"]
    return (
        f"{calibration + validation} crops ({calibration} calibration, {validation} "
        f"validation) of {len(photographs)} scikit-image photographs ({names}); "
        "calibration and validation come from disjoint regions of each photograph"
    )


def _labelled() -> tuple[Photograph, ...]:
    present = set(available_photographs())
    missing = [p.file for p in LABELLED if p not in present]
    if missing:
        # The class list is fixed (it is a model's id2label): a missing photograph
        # cannot be skipped without renumbering every class after it.
        raise UnsupportedError(
            f"{_data_dir()}: missing {', '.join(missing)}; the labelled crops need all of "
            f"{', '.join(p.file for p in LABELLED)}"
        )
    return LABELLED


def photograph_labels() -> list[str]:
    """The class names of the "which photograph is this crop from" task, by class index."""
    return [p.label for p in LABELLED if p.label is not None]


def labelled_training_crops(count: int, seed: int) -> list[tuple[Image.Image, int]]:
    """`count` random crops of the labelled photographs' training regions (left 60 %),
    each with the index of its photograph in `photograph_labels()`.

    Random size (48 pixels to the whole region), aspect ratio (1:2 to 2:1), resizing and
    horizontal flip. The photographs are taken in turn, so the classes are balanced
    (the caller shuffles). No crop overlaps a calibration or validation crop.
    """
    photographs = _labelled()
    plans = crop_plan("training", count, photographs, seed=f"labelled-{seed}", flips=True)
    return [(render(plan), photographs.index(plan.photograph)) for plan in plans]


def labelled_heldout_crops(split: HeldOutSplit, count: int) -> list[tuple[Image.Image, int]]:
    """Crops of the labelled photographs' calibration or validation regions, with the
    index of their photograph: a held-out test set for a model trained on
    `labelled_training_crops`. Crop k of a photograph is the very crop that
    `builtin_images(split)` returns for it, so these are builtin_images-style crops.
    """
    photographs = _labelled()
    plans = crop_plan(split, count, photographs)
    return [(render(plan), photographs.index(plan.photograph)) for plan in plans]


def _to_rgb(image: Image.Image) -> Image.Image:
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        import numpy as np

        # 16-bit grey (PNG, some scanners): Pillow's convert() clips at 255, which turns
        # almost every pixel white; keep the top 8 bits instead.
        wide = np.asarray(image).astype(np.int64)
        if wide.max(initial=0) > 255:
            wide = wide >> 8
        image = Image.fromarray(np.clip(wide, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "P" and "transparency" in image.info:
        # Through RGBA, as Pillow asks, rather than straight to RGB with a warning; the
        # result is the one transformers' convert_rgb gives an RGBA picture.
        image = image.convert("RGBA")
    return image.convert("RGB")


def _read_user_image(path: Path) -> Image.Image:
    from PIL import Image, ImageOps

    unreadable = f"{path}: not an image Pillow can read"
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a warning
            # would let a decompression bomb through, so it is an error here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                # Image.open has read the header only: refuse before decoding.
                if width * height > MAX_USER_PIXELS:
                    raise BadInputError(
                        f"{path}: {width}×{height} pixels is more than the "
                        f"{MAX_USER_PIXELS // 1_000_000} megapixels accepted"
                    )
                image.seek(0)  # the first frame of an animated GIF or WebP
                image.load()
                upright = ImageOps.exif_transpose(image)
                return _to_rgb(upright)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadInputError(
            f"{path}: refused as a possible decompression bomb (more than "
            f"{MAX_USER_PIXELS // 1_000_000} megapixels)"
        ) from exc
    except BadInputError:
        raise
    # Pillow reports damaged files as any of these, depending on the format's decoder.
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as exc:
        raise BadInputError(unreadable) from exc


def load_image_folder(folder: Path) -> list[Image.Image]:
    """The user's pictures for a vision model (`--samples DIR`), as RGB images.

    Every *.jpg, *.jpeg, *.png, *.bmp, *.webp and *.gif file directly in `folder`
    (suffix in any case), sorted by name; hidden files are skipped, as macOS leaves
    ``._name.jpg`` resource forks beside photos copied to other filesystems. EXIF
    orientation is applied, so a phone photo is upright as its owner saw it; a GIF
    gives its first frame.
    """
    if not folder.is_dir():
        raise BadInputError(f"{folder}: not a folder")
    paths = sorted(
        (
            path
            for path in folder.iterdir()
            if path.suffix.lower() in IMAGE_SUFFIXES
            and not path.name.startswith(".")
            and path.is_file()
        ),
        key=lambda path: path.name,
    )
    if not paths:
        raise BadInputError(
            f"{folder}: no images ({', '.join('*' + suffix for suffix in IMAGE_SUFFIXES)})"
        )
    return [_read_user_image(path) for path in paths]


def split_user_images(images: Sequence[T]) -> tuple[list[T], list[T]]:
    """(calibration, validation): every fourth image calibrates, the rest validate.

    Disjoint and deterministic, and both halves sample the whole folder rather than its
    head and tail. With two or more images each side gets at least one (the last image
    calibrates when the rule gives none); a single image goes to validation, since
    judging a model needs data and calibration can fall back to the built-in crops.
    """
    calibration = [image for index, image in enumerate(images) if index % 4 == 3]
    validation = [image for index, image in enumerate(images) if index % 4 != 3]
    if not calibration and len(images) >= 2:
        calibration = [validation.pop()]
    return calibration, validation
