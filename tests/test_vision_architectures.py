"""Export-shape tests of the vision architectures users ship, from random-weight configs.

Each architecture goes through the whole conversion (optimum export, the family's
preprocessing, validation against PyTorch, the bundle) at fp32 on both runtimes, which
must agree exactly; accuracy under quantisation is the trained models' business
(tests/test_vision.py). Configs are tiny: seconds each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("skimage", reason='needs the vision extra: pip install -e ".[vision]"')

Builder = Callable[[Path], None]
TINY_TRANSFORMER = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
LABELS = {
    "num_labels": 3,
    "id2label": {0: "a", 1: "b", 2: "c"},
    "label2id": {"a": 0, "b": 1, "c": 2},
}


def _vit(folder: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(**TINY_TRANSFORMER, **LABELS)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def _deit(folder: Path) -> None:
    from transformers import DeiTConfig, DeiTForImageClassification, DeiTImageProcessor

    config = DeiTConfig(**TINY_TRANSFORMER, **LABELS)
    DeiTForImageClassification(config).save_pretrained(folder)
    DeiTImageProcessor(
        size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)


def _swin(folder: Path) -> None:
    from transformers import SwinConfig, SwinForImageClassification, ViTImageProcessor

    config = SwinConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
        window_size=4, **LABELS,
    )  # fmt: skip
    SwinForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def _resnet(folder: Path) -> None:
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", **LABELS
    )
    ResNetForImageClassification(config).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(folder)


def _mobilenet_v1(folder: Path) -> None:
    from transformers import (
        MobileNetV1Config,
        MobileNetV1ForImageClassification,
        MobileNetV1ImageProcessor,
    )

    # The default initialiser (std 0.02) leaves every ReLU6 dead at this size: zero logits.
    config = MobileNetV1Config(
        image_size=32, depth_multiplier=0.25, initializer_range=0.5, **LABELS
    )
    MobileNetV1ForImageClassification(config).save_pretrained(folder)
    MobileNetV1ImageProcessor(
        size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)


def _efficientnet(folder: Path) -> None:
    from transformers import (
        EfficientNetConfig,
        EfficientNetForImageClassification,
        EfficientNetImageProcessor,
    )

    config = EfficientNetConfig(
        image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, **LABELS
    )
    EfficientNetForImageClassification(config).save_pretrained(folder)
    EfficientNetImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def _dinov2(folder: Path) -> None:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(**TINY_TRANSFORMER)
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)


ARCHITECTURES: dict[str, tuple[Builder, str]] = {
    "vit": (_vit, "image-classification"),
    "deit": (_deit, "image-classification"),
    "swin": (_swin, "image-classification"),
    "resnet": (_resnet, "image-classification"),
    "mobilenet_v1": (_mobilenet_v1, "image-classification"),
    "efficientnet": (_efficientnet, "image-classification"),
    "dinov2": (_dinov2, "image-feature-extraction"),
}


@pytest.mark.parametrize("recipe", ["onnx-fp32", "openvino-fp32"])
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_architecture_converts_exactly(architecture: str, recipe: str, tmp_path: Path) -> None:
    import torch

    from edgeport.pipeline import ConvertRequest, convert

    if recipe.startswith("openvino"):
        pytest.importorskip(
            "openvino", reason='needs the openvino extra: pip install -e ".[openvino]"'
        )
        if architecture == "efficientnet":
            # transformers' EfficientNet pools with AvgPool2d(kernel=hidden_dim, ceil_mode=True),
            # a kernel larger than the feature map that PyTorch clamps and OpenVINO's CPU
            # plugin refuses; the search reports the OpenVINO candidates as errors.
            pytest.xfail("OpenVINO refuses transformers' EfficientNet pooler")
    build, task = ARCHITECTURES[architecture]
    torch.manual_seed(0)
    model = tmp_path / architecture
    build(model)
    result = convert(
        ConvertRequest(
            model=str(model),
            profile="x86-64-avx2",
            out=tmp_path / "bundle",
            recipes=frozenset({recipe}),
        )
    )
    assert result.verdict == "passed", [a.detail for a in result.attempts]
    assert result.plan.model.task == task
    assert result.chosen is not None and result.chosen.validation is not None
    metrics = {m.name: m.value for m in result.chosen.validation.metrics}
    if task == "image-classification":
        assert metrics["top1_agreement"] == 1.0 and metrics["logit_cosine_min"] > 0.9999
    else:
        assert metrics["embedding_cosine_min"] > 0.9999
