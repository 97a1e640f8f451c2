"""The device-side image preprocessing against transformers' slow image processors.

Every case runs real photographs from scikit-image's data folder, and crops of them at odd
sizes and aspect ratios, through `pixel_values` and through the slow processor that
`AutoImageProcessor.from_pretrained(folder, use_fast=False)` builds from the same
preprocessor_config.json. The two make the same PIL calls and the same numpy arithmetic
in the same dtypes, so they agree bit for bit: the comparison is exact, which also catches
a float32-vs-float64 slip in rescaling that a 1e-5 tolerance would let through.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgeport.runners.ondevice import image_unsupported_reason, load_image, pixel_values

skimage_data = pytest.importorskip("skimage.data")
transformers = pytest.importorskip("transformers")

DATA = Path(skimage_data.__file__).parent
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
HALF = [0.5, 0.5, 0.5]


def _photo(name: str) -> Image.Image:
    with Image.open(DATA / name) as image:
        return image.copy()  # loaded, and the file closed


@cache
def photographs() -> dict[str, Image.Image]:
    """Whole photographs in their own modes (grey and RGBA included), and crops whose sizes
    exercise the truncation of resize targets and the offsets and padding of center crops."""
    astronaut, coffee, chelsea, rocket = (
        _photo(n) for n in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")
    )
    return {
        "astronaut 512x512": astronaut,
        "chelsea 451x300": chelsea,
        "coffee 600x400": coffee,
        "rocket 640x427 jpeg": rocket,
        "camera 512x512 grey": _photo("camera.png"),
        "horse 400x328 rgba": _photo("horse.png"),
        "large hubble 1000x872": _photo("hubble_deep_field.jpg"),
        "tall 37x211": astronaut.crop((200, 150, 237, 361)),
        "wide 300x50": coffee.crop((150, 200, 450, 250)),
        "tiny 20x20": chelsea.crop((200, 120, 220, 140)),
        "odd 333x257": rocket.crop((101, 77, 434, 334)),
    }


# preprocessor_config.json of popular Hub models, as they ship them (older ones name a
# FeatureExtractor and give sizes as bare ints), then small and unusual variants.
HUB_CONFIGS: dict[str, dict[str, Any]] = {
    "google/vit-base-patch16-224": {
        "feature_extractor_type": "ViTFeatureExtractor",
        "do_normalize": True,
        "do_resize": True,
        "image_mean": HALF,
        "image_std": HALF,
        "resample": 2,
        "size": 224,
    },
    "facebook/deit-small-distilled-patch16-224": {
        "feature_extractor_type": "DeiTFeatureExtractor",
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "resample": 3,
        "size": 256,
    },
    "facebook/convnext-tiny-224": {
        "feature_extractor_type": "ConvNextFeatureExtractor",
        "crop_pct": 0.875,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "resample": 3,
        "size": 224,
    },
    "facebook/convnext-base-384": {  # >= 384: warped to 384x384, crop_pct unused
        "feature_extractor_type": "ConvNextFeatureExtractor",
        "crop_pct": 0.875,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "resample": 3,
        "size": 384,
    },
    # ResNet has no processor of its own: AutoImageProcessor maps it to ConvNeXt's, and the
    # checkpoint ships the same settings as convnext-tiny-224 (resize 256, crop 224, bicubic).
    "microsoft/resnet-50": {
        "feature_extractor_type": "ConvNextFeatureExtractor",
        "crop_pct": 0.875,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "resample": 3,
        "size": 224,
    },
    "google/mobilenet_v2_1.0_224": {  # crop_pct is there, and MobileNetV2 ignores it
        "image_processor_type": "MobileNetV2ImageProcessor",
        "crop_pct": 0.875,
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": HALF,
        "image_std": HALF,
        "resample": 2,
        "size": {"shortest_edge": 256},
    },
    "google/mobilenet_v1_1.0_224": {
        "image_processor_type": "MobileNetV1ImageProcessor",
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": HALF,
        "image_std": HALF,
        "resample": 2,
        "size": {"shortest_edge": 256},
    },
    "openai/clip-vit-base-patch32": {
        "feature_extractor_type": "CLIPFeatureExtractor",
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "resample": 3,
        "size": 224,
    },
    "google/siglip-base-patch16-224": {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor",
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": HALF,
        "image_std": HALF,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 224, "width": 224},
    },
    "facebook/dinov2-small": {
        "image_processor_type": "BitImageProcessor",
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 256},
    },
    "microsoft/beit-base-patch16-224": {
        "feature_extractor_type": "BeitFeatureExtractor",
        "crop_size": 224,
        "do_center_crop": False,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": HALF,
        "image_std": HALF,
        "reduce_labels": False,
        "resample": 2,
        "size": 224,
    },
    "google/efficientnet-b0": {
        "image_processor_type": "EfficientNetImageProcessor",
        "crop_size": {"height": 289, "width": 289},
        "do_center_crop": False,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": [0.47853944, 0.4732864, 0.47434163],
        "include_top": True,
        "resample": 0,
        "rescale_factor": 0.00392156862745098,
        "rescale_offset": False,
        "size": {"height": 224, "width": 224},
    },
    "apple/mobilevit-small": {  # no normalisation, BGR
        "feature_extractor_type": "MobileViTFeatureExtractor",
        "crop_size": 256,
        "do_center_crop": True,
        "do_flip_channel_order": True,
        "do_resize": True,
        "resample": 2,
        "size": 288,
    },
    "facebook/levit-128S": {
        "feature_extractor_type": "LevitFeatureExtractor",
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "resample": 3,
        "size": 224,
    },
    "sail/poolformer_s12": {
        "feature_extractor_type": "PoolFormerFeatureExtractor",
        "crop_pct": 0.9,
        "do_normalize": True,
        "do_resize_and_center_crop": True,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
        "resample": 3,
        "size": 224,
    },
}

VARIANT_CONFIGS: dict[str, dict[str, Any]] = {
    # edgeport's test models are tiny: 64 < 384, so resize the short side to int(64/0.875)=73
    "convnext 64 crop_pct": {
        "image_processor_type": "ConvNextImageProcessor",
        "crop_pct": 0.875,
        "resample": 3,
        "size": {"shortest_edge": 64},
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
    },
    # null crop_pct means the default 224/256; 47/0.875 = 53.7 is truncated to 53, not rounded
    "convnext 47 crop_pct null": {
        "image_processor_type": "ConvNextImageProcessor",
        "crop_pct": None,
        "size": {"shortest_edge": 47},
    },
    "vit 32x48 fast name": {  # a Fast name, read as the slow processor reads it
        "image_processor_type": "ViTImageProcessorFast",
        "size": {"height": 32, "width": 48},
        "resample": 2,
    },
    "mobilenet_v1 box 40": {
        "image_processor_type": "MobileNetV1ImageProcessor",
        "crop_size": {"height": 32, "width": 32},
        "resample": 4,
        "size": {"shortest_edge": 40},
    },
    "clip use_square_size hamming": {
        "image_processor_type": "CLIPImageProcessor",
        "use_square_size": True,
        "size": {"shortest_edge": 70},
        "crop_size": {"height": 64, "width": 50},
        "resample": 5,
    },
    # No resize, and a crop larger than small images: zero padding with uneven margins.
    "deit crop only, padded": {
        "image_processor_type": "DeiTImageProcessor",
        "do_resize": False,
        "crop_size": {"height": 240, "width": 96},
    },
    # The padding is zero before rescaling, so rescale_offset turns it into -1.
    "efficientnet offset lanczos padded": {
        "image_processor_type": "EfficientNetImageProcessor",
        "size": {"height": 200, "width": 150},
        "do_center_crop": True,
        "crop_size": {"height": 211, "width": 151},
        "rescale_offset": True,
        "include_top": False,
        "resample": 1,
    },
    "siglip 50x70 no rescale no normalize": {
        "image_processor_type": "SiglipImageProcessor",
        "size": {"height": 50, "width": 70},
        "do_rescale": False,
        "do_normalize": False,
    },
    "beit 100x80 crop 64": {
        "image_processor_type": "BeitImageProcessor",
        "size": {"height": 100, "width": 80},
        "crop_size": {"height": 64, "width": 64},
        "rescale_factor": 0.5,
    },
    "mobilevit rgb order": {
        "image_processor_type": "MobileViTImageProcessor",
        "do_flip_channel_order": False,
        "size": {"shortest_edge": 72},
        "crop_size": {"height": 64, "width": 64},
    },
    "levit 90x70": {
        "image_processor_type": "LevitImageProcessor",
        "size": {"height": 90, "width": 70},
        "crop_size": 64,
    },
    "poolformer non-square crop_pct": {
        "image_processor_type": "PoolFormerImageProcessor",
        "size": {"height": 100, "width": 80},
        "crop_pct": 0.9,
        "crop_size": {"height": 96, "width": 72},
    },
    "poolformer square crop_pct": {
        "image_processor_type": "PoolFormerImageProcessor",
        "size": {"height": 64, "width": 64},
        "crop_pct": 0.875,
        "crop_size": 64,
    },
    "poolformer crop_pct null": {
        "image_processor_type": "PoolFormerImageProcessor",
        "size": {"shortest_edge": 100},
        "crop_pct": None,
        "crop_size": 96,
    },
    "bit scalar mean and std": {
        "image_processor_type": "BitImageProcessor",
        "size": {"shortest_edge": 48},
        "crop_size": 48,
        "image_mean": 0.45,
        "image_std": 0.27,
    },
}

# Without a crop, a shortest-edge resize keeps each image's aspect ratio: one image a call.
PER_IMAGE_CONFIGS: dict[str, dict[str, Any]] = {
    "clip shortest edge, no crop": {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 64},
        "do_center_crop": False,
    },
    "mobilenet_v2 no resize, no crop": {
        "image_processor_type": "MobileNetV2ImageProcessor",
        "do_resize": False,
        "do_center_crop": False,
    },
}

SUPPORTED = [
    "ViTImageProcessor",
    "DeiTImageProcessor",
    "ConvNextImageProcessor",
    "MobileNetV2ImageProcessor",
    "MobileNetV1ImageProcessor",
    "CLIPImageProcessor",
    "SiglipImageProcessor",
    "BitImageProcessor",
    "BeitImageProcessor",
    "EfficientNetImageProcessor",
    "MobileViTImageProcessor",
    "LevitImageProcessor",
    "PoolFormerImageProcessor",
]


def _slow_processor(config: Mapping[str, Any], folder: Path) -> Any:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    processor = transformers.AutoImageProcessor.from_pretrained(folder, use_fast=False)
    assert not processor.is_fast
    return processor


def _reference(processor: Any, images: Sequence[Image.Image]) -> np.ndarray:
    # Processors without do_convert_rgb fail on grey or RGBA images; pixel_values converts
    # every image to RGB, so they get the RGB image, and the others the image as it is.
    if not getattr(processor, "do_convert_rgb", None):
        images = [image.convert("RGB") for image in images]
    return np.asarray(processor(list(images), return_tensors="np")["pixel_values"])


def _assert_matches(
    processor: Any, config: Mapping[str, Any], *, batch: bool = True
) -> dict[str, float]:
    """Compare image by image (and as one batch); return the max difference per image."""
    assert image_unsupported_reason(config) is None
    differences: dict[str, float] = {}
    for name, image in photographs().items():
        expected = _reference(processor, [image])
        actual = pixel_values([image], config)
        assert actual.dtype == np.float32, name
        assert actual.shape == expected.shape, name
        differences[name] = float(np.max(np.abs(actual - expected)))
    assert max(differences.values()) == 0.0, differences
    if batch:
        images = list(photographs().values())
        np.testing.assert_array_equal(pixel_values(images, config), _reference(processor, images))
    return differences


@pytest.mark.parametrize("config", list(HUB_CONFIGS.values()), ids=list(HUB_CONFIGS))
def test_hub_configs_match_transformers(config: dict[str, Any], tmp_path: Path) -> None:
    _assert_matches(_slow_processor(config, tmp_path), config)


@pytest.mark.parametrize("config", list(VARIANT_CONFIGS.values()), ids=list(VARIANT_CONFIGS))
def test_unusual_configs_match_transformers(config: dict[str, Any], tmp_path: Path) -> None:
    _assert_matches(_slow_processor(config, tmp_path), config)


@pytest.mark.parametrize("config", list(PER_IMAGE_CONFIGS.values()), ids=list(PER_IMAGE_CONFIGS))
def test_aspect_preserving_configs_match_image_by_image(
    config: dict[str, Any], tmp_path: Path
) -> None:
    _assert_matches(_slow_processor(config, tmp_path), config, batch=False)
    with pytest.raises(ValueError, match="different sizes"):
        pixel_values(list(photographs().values()), config)


@pytest.mark.parametrize("name", SUPPORTED)
def test_defaults_match_each_processor_class(name: str) -> None:
    """A config naming only the type gets the class's own defaults (sizes, filter, mean)."""
    _assert_matches(getattr(transformers, name)(), {"image_processor_type": name})


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"image_processor_type": "DetrImageProcessor"}, "DetrImageProcessor is not"),
        ({"feature_extractor_type": "Wav2Vec2FeatureExtractor"}, "Wav2Vec2ImageProcessor"),
        ({"do_resize": True}, "names no image_processor_type"),
        (
            {
                "image_processor_type": "ViTImageProcessor",
                "auto_map": {"AutoImageProcessor": "x.Y"},
            },
            "remote-code",
        ),
        ({"image_processor_type": "ViTImageProcessor", "do_pad": True}, "do_pad"),
        ({"image_processor_type": "ViTImageProcessor", "do_center_crop": True}, "do_center_crop"),
        (
            {
                "image_processor_type": "CLIPImageProcessor",
                "size": {"shortest_edge": 224, "longest_edge": 448},
            },
            "long edge",
        ),
        ({"image_processor_type": "SiglipImageProcessor", "size": 224}, "height and width"),
        (
            {"image_processor_type": "DeiTImageProcessor", "size": {"shortest_edge": 256}},
            "height and width",
        ),
        ({"image_processor_type": "ConvNextImageProcessor", "size": {"height": 9}}, "size"),
        ({"image_processor_type": "ViTImageProcessor", "resample": 7}, "resample"),
        ({"image_processor_type": "ViTImageProcessor", "image_mean": [0.5, 0.5]}, "image_mean"),
    ],
)
def test_unsupported_configs_are_refused_with_a_reason(config: dict[str, Any], reason: str) -> None:
    message = image_unsupported_reason(config)
    assert message is not None and reason in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="unsupported image preprocessing"):
        pixel_values([photographs()["tiny 20x20"]], config)


@pytest.mark.parametrize(
    "config",
    [
        {"image_processor_type": "SiglipImageProcessor", "size": 224},
        {"image_processor_type": "DeiTImageProcessor", "size": {"shortest_edge": 256}},
    ],
)
def test_refused_sizes_are_ones_transformers_rejects_too(
    config: dict[str, Any], tmp_path: Path
) -> None:
    processor = _slow_processor(config, tmp_path)
    with pytest.raises((KeyError, ValueError)):
        processor(photographs()["tiny 20x20"], return_tensors="np")


def test_irrelevant_options_do_not_make_a_config_unsupported() -> None:
    """Segmentation-label options and keys a processor does not read leave pixels alone."""
    config = {
        "image_processor_type": "BeitImageProcessorFast",
        "do_reduce_labels": True,
        "processor_class": "SomeProcessor",
        "crop_pct": 0.5,  # BEiT does not read crop_pct
    }
    assert image_unsupported_reason(config) is None


def test_load_image_is_upright_rgb_like_transformers(tmp_path: Path) -> None:
    """An EXIF orientation is applied (the cat becomes portrait), and the mode becomes RGB."""
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: display rotated 90° clockwise
    _photo("chelsea.png").crop((100, 50, 260, 150)).save(path, exif=exif, quality=95)
    hf_load_image = transformers.image_utils.load_image

    image = load_image(path)
    assert (image.mode, image.size) == ("RGB", (100, 160))
    np.testing.assert_array_equal(np.asarray(image), np.asarray(hf_load_image(str(path))))

    grey = load_image(str(DATA / "camera.png"))
    assert grey.mode == "RGB"
    np.testing.assert_array_equal(
        np.asarray(grey), np.asarray(hf_load_image(str(DATA / "camera.png")))
    )
