"""Vision: image classifiers and image embeddings (ViT, DeiT, ConvNeXt, MobileNet, ResNet,
EfficientNet, DINOv2...), judged on real photographs.

Images are turned into pixel values by the bundle's own ondevice.py (the model's
preprocessor_config.json reproduced in numpy and Pillow), on the host as on the device,
so validation measures the conversion alone. The original PyTorch model and every
candidate see the same pixels: crops of scikit-image's photographs at many sizes and
aspect ratios by default (calibration and validation from disjoint regions of each
photograph), or the user's folder of images (`--samples DIR`). Each image runs alone
(the camera's case) and in batches of eight.

Gates: top-1 agreement with the original (>= 0.98 by default) and the worst logit cosine
(>= 0.99) for classifiers; the worst embedding cosine (>= 0.99) for embeddings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeport.errors import BadInputError, UnsupportedError
from edgeport.families import BenchWorkload, Prepared
from edgeport.runners import ondevice
from edgeport.validate import (
    Evaluation,
    ReferenceModel,
    compare,
    embedding_cosine_metrics,
    gated_metric,
    run_batches,
)

if TYPE_CHECKING:
    from PIL import Image

    from edgeport.backends import ExportedModel, Feeds, InferenceSession, PartSource
    from edgeport.planner import Objective
    from edgeport.schemas import DeviceProfile, GoldenSpec, ModelInfo, Tolerance, ValidationReport
    from edgeport.validate import MetricList

MIB = 1024 * 1024
PREPROCESSOR = "preprocessor_config.json"
PIXELS = "pixel_values"
CLASSIFICATION = "image-classification"
EMBEDDING = "image-feature-extraction"
GOLDEN_IMAGES = 6
# Fewer user images than this calibrate and judge nothing reliably.
MIN_USER_IMAGES = 10


@dataclass(frozen=True)
class ImageSamples:
    calibration: tuple[Image.Image, ...]
    validation: tuple[Image.Image, ...]
    origin: str
    # What the manifest may say of each validation image: where a built-in crop comes
    # from; for a user's image only its digest (the pictures may be private).
    validation_names: tuple[str, ...]
    builtin: bool = False

    def describe(self) -> str:
        return (
            f"{len(self.validation)} validation and {len(self.calibration)} calibration "
            f"images from {self.origin}; the two sets are disjoint"
        )


def _digest(image: Image.Image) -> str:
    digest = hashlib.sha256(image.tobytes()).hexdigest()
    return f"sha256:{digest} ({image.width}x{image.height} pixels)"


def builtin_samples() -> ImageSamples:
    from edgeport.image_samples import (
        DEFAULT_COUNTS,
        available_photographs,
        crop_plan,
        describe_builtin,
        render,
    )

    photographs = available_photographs()
    calibration = crop_plan("calibration", DEFAULT_COUNTS["calibration"], photographs)
    validation = crop_plan("validation", DEFAULT_COUNTS["validation"], photographs)
    return ImageSamples(
        calibration=tuple(render(plan) for plan in calibration),
        validation=tuple(render(plan) for plan in validation),
        origin=describe_builtin(),
        validation_names=tuple(
            f"{plan.photograph.file} box {list(plan.box)}"
            + (f" resized to {list(plan.resize)}" if plan.resize else "")
            for plan in validation
        ),
        builtin=True,
    )


def user_samples(folder: Path) -> ImageSamples:
    from edgeport.image_samples import load_image_folder, split_user_images

    if not folder.is_dir():
        raise BadInputError(f"--samples for a vision model must be a folder of images: {folder}")
    images = load_image_folder(folder)
    if len(images) < MIN_USER_IMAGES:
        raise BadInputError(
            f"{folder}: {len(images)} images; need at least {MIN_USER_IMAGES} (a quarter "
            "calibrate, the rest validate)"
        )
    calibration, validation = split_user_images(images)
    return ImageSamples(
        calibration=tuple(calibration),
        validation=tuple(validation),
        origin=f"the images in {folder.name}/",
        validation_names=tuple(_digest(image) for image in validation),
    )


def preprocessor_config(folder: Path) -> dict[str, Any]:
    from edgeport.hub import read_json_file

    path = folder / PREPROCESSOR
    if not path.is_file():
        raise UnsupportedError(f"{folder}: no {PREPROCESSOR}; edgeport needs the image processor")
    config = read_json_file(path)
    if not isinstance(config, dict):
        raise BadInputError(f"{path}: expected a JSON object")
    reason = ondevice.image_unsupported_reason(config)
    if reason:
        raise UnsupportedError(f"{path}: {reason}")
    return config


def golden_indices(count: int, wanted: int = GOLDEN_IMAGES) -> list[int]:
    """Which of `count` validation inputs become golden samples: `wanted` of them (six
    images), spread over the set."""
    return sorted({round(k * (count - 1) / max(wanted - 1, 1)) for k in range(wanted)})


def transformer_activation_mb(side: int, patch: int, hidden: int, heads: int) -> float:
    """A vision transformer's activations: one token per patch plus CLS, a few hidden
    states of each and one attention matrix per head alive at once."""
    tokens = (side // max(patch, 1)) ** 2 + 1
    return (tokens * hidden * 4 * 8 + heads * tokens * tokens * 4 * 2) / MIB


def embedding_output(output_names: Sequence[str]) -> str:
    """The output an image embedding is read from: the backbone's pooled output when it
    has one (ConvNeXt, ResNet, DINOv2's layer-normed CLS), else the token sequence."""
    for name in ("pooler_output", "image_embeds", "last_hidden_state"):
        if name in output_names:
            return name
    return output_names[0]


class Vision:
    """Image classifiers and image embeddings on ONNX Runtime and OpenVINO."""

    id = "vision"
    tasks = (CLASSIFICATION, EMBEDDING)
    task_aliases: tuple[tuple[str, str], ...] = ()
    decodes = False
    reads_text = False
    pads_tokens = False
    encoder_decoder = False
    default_objective: Objective = "latency"
    batch = 8

    def export_parts(self, model: ModelInfo) -> tuple[PartSource, ...]:
        return ()  # one graph, exported by optimum

    def load_samples(self, path: Path | None) -> ImageSamples:
        return builtin_samples() if path is None else user_samples(path)

    def inspect(self, folder: Path, config: dict[str, Any], task: str) -> dict[str, Any]:
        preprocessor_config(folder)  # an unsupported processor stops `plan`, not `convert`
        return {"pooling": "none"}

    def estimate_activation_mb(
        self, model: ModelInfo, profile: DeviceProfile, kv_cache_bytes: int = 4
    ) -> float:
        """A few feature maps of the largest stage, or a ViT's tokens with their attention."""
        size = image_side(model.local_path)
        heads = model.dims.num_attention_heads
        if heads:  # a vision transformer
            return transformer_activation_mb(
                size, _patch_size(model.local_path), model.dims.hidden_size or 768, heads
            )
        # A convolutional network: the first stage's maps (64 channels at 1/2 or 1/4 of
        # the image side) dominate; six of them alive at once is generous.
        return 6 * 64 * (size // 2) ** 2 * 4 / MIB

    def prepare_processor(
        self, model: ModelInfo, workdir: Path, *, trust_remote_code: bool
    ) -> Path:
        preprocessor_config(model.local_path)
        return model.local_path

    def processor_files(self, folder: Path) -> list[Path]:
        return [folder / PREPROCESSOR]

    def prepare(
        self,
        model: ModelInfo,
        processor_dir: Path,
        samples: ImageSamples,
        exported: ExportedModel,
        reference: ReferenceModel,
    ) -> Prepared:
        config = preprocessor_config(processor_dir)
        if PIXELS not in exported.input_names:
            raise UnsupportedError(f"the export has no {PIXELS} input: {exported.input_names}")
        output_names = (
            ("logits",)
            if model.task == CLASSIFICATION
            else (embedding_output(exported.output_names),)
        )

        def feeds(images: Sequence[Image.Image]) -> Feeds:
            return {PIXELS: ondevice.pixel_values(images, config)}

        validation = list(samples.validation)
        singles = [feeds([image]) for image in validation]
        # Batches need one size; a config without a crop keeps each aspect ratio.
        batched = [
            feeds(validation[start : start + self.batch])
            for start in range(0, len(validation), self.batch)
            if len({s[PIXELS].shape for s in singles[start : start + self.batch]}) == 1
        ]
        batches = singles + batched
        evaluation = Evaluation(
            batches=batches,
            reference=[reference.run(batch, output_names) for batch in batches],
            output_names=output_names,
            calibration_samples=len(samples.calibration),
            validation_samples=len(validation),
            notes=(
                f"validated on {samples.describe()}",
                f"each image run alone and in batches of {self.batch}; pixels from "
                f"{PREPROCESSOR} by the bundle's own preprocessing",
            ),
            texts=samples.validation_names,
        )
        calibration = [feeds([image]) for image in samples.calibration]
        search = Evaluation(
            batches=calibration,
            reference=[reference.run(batch, output_names) for batch in calibration],
            output_names=output_names,
            calibration_samples=len(calibration),
            validation_samples=0,
        )
        return Prepared(
            evaluation=evaluation,
            calibration=calibration,
            bench=BenchWorkload(singles[0]),  # a camera's frame: one image at a time
            search=search,
        )

    def validate(
        self,
        model: ModelInfo,
        session: InferenceSession,
        evaluation: Evaluation,
        tolerance: Tolerance,
    ) -> ValidationReport:
        outputs = run_batches(session.run, evaluation.batches)
        return compare(model, evaluation, outputs, tolerance, _metrics)

    def thresholds(self, task: str) -> tuple[tuple[str, str], ...]:
        if task == CLASSIFICATION:
            return (
                ("top1_agreement", "top1_agreement_min"),
                ("logit_cosine_min", "logit_cosine_min"),
            )
        return (
            ("embedding_cosine_min", "embedding_cosine_min"),
            ("embedding_cosine_mean", "embedding_cosine_mean_min"),
        )

    def runner_template(self, runner: str) -> str | None:
        # One runner for every runtime: ondevice.py loads the model for the runner flavour.
        return "vision.py" if runner in ondevice.RUNTIMES else None

    def device_packages(self, runner: str) -> list[str]:
        return ["pillow"]

    def write_golden(
        self,
        folder: Path,
        model: ModelInfo,
        evaluation: Evaluation,
        samples: ImageSamples,
        tolerance: Tolerance,
        input_names: Sequence[str],
        output_names: Sequence[str],
    ) -> GoldenSpec | None:
        """Six validation images (spread over the set), as pixel values, with the
        original's outputs; verify.py gates them with the same formulas."""
        from edgeport.golden import thresholds, write_npz
        from edgeport.schemas import GoldenSpec

        count = evaluation.validation_samples
        if not count:
            return None
        chosen = golden_indices(count)
        arrays: dict[str, np.ndarray] = {}
        names = list(evaluation.output_names)
        for slot, index in enumerate(chosen):
            batch, reference = evaluation.batches[index], evaluation.reference[index]
            arrays[ondevice.golden_keys(slot, PIXELS, "input")] = np.asarray(
                batch[PIXELS], dtype=np.float32
            )
            for name in names:
                arrays[ondevice.golden_keys(slot, name, "output")] = np.asarray(
                    reference[name], dtype=np.float32
                )
        write_npz(folder / ondevice.GOLDEN_FILE, arrays)
        return GoldenSpec(
            file=ondevice.GOLDEN_FILE,
            texts=[evaluation.texts[i] for i in chosen] if evaluation.texts else [""] * len(chosen),
            texts_redacted=not samples.builtin,
            tokens=[int(np.prod(evaluation.batches[i][PIXELS].shape[-2:])) for i in chosen],
            input_names=[PIXELS],
            output_names=names,
            thresholds=thresholds(self.thresholds(model.task), tolerance),
            reference="outputs of the original PyTorch model on the build host",
        )

    def runtime_fields(
        self, model: ModelInfo, processor_dir: Path, output_names: Sequence[str]
    ) -> dict[str, Any]:
        from edgeport.model_info import config_labels

        fields: dict[str, Any] = {"preprocessor": PREPROCESSOR}
        if model.task == CLASSIFICATION:
            fields["labels"] = config_labels(model.local_path)
        else:
            fields["embedding_output"] = embedding_output(output_names)
        return fields


def _metrics(
    model: ModelInfo,
    evaluation: Evaluation,
    candidate: Sequence[Mapping[str, np.ndarray]],
    tolerance: Tolerance,
    generations: Sequence[Sequence[int]] = (),
) -> MetricList:
    """The bundle's own formulas (ondevice.py), gated with the recipe's tolerance."""
    name = evaluation.output_names[0]
    if model.task == CLASSIFICATION:
        values = ondevice.image_classification_metrics(evaluation.reference, candidate, name)
        return [
            gated_metric(
                "top1_agreement", values["top1_agreement"], tolerance, "top1_agreement_min", True
            ),
            gated_metric(
                "logit_cosine_min", values["logit_cosine_min"], tolerance, "logit_cosine_min", True
            ),
        ]
    values = ondevice.image_embedding_metrics(evaluation.reference, candidate, name)
    return embedding_cosine_metrics(
        values["embedding_cosine_min"], values["embedding_cosine_mean"], tolerance
    )


def _patch_size(folder: Path) -> int:
    from edgeport.hub import read_config

    value = read_config(folder).get("patch_size")
    if isinstance(value, list) and value and isinstance(value[0], int):
        value = value[0]
    return value if isinstance(value, int) and value > 0 else 16


def image_side(folder: Path) -> int:
    """The side of the square the model sees, from its processor's crop or size."""
    try:
        config = preprocessor_config(folder)
    except (UnsupportedError, BadInputError):
        return 224
    for key in ("crop_size", "size"):
        value = config.get(key)
        if isinstance(value, int):
            return value
        if isinstance(value, dict):
            sides = [v for k, v in value.items() if isinstance(v, int) and k != "longest_edge"]
            if sides:
                return max(sides)
    return 224


FAMILY = Vision()
