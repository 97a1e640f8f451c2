"""Zero-shot image classification: CLIP and SigLIP as a two-part model, judged on real
photographs against label prompts.

The model ships as two graphs cut from the original (backends/torch_parts.py): the image
tower (`get_image_features`, pixels -> image_embeds) and the text tower
(`get_text_features`, token ids -> text_embeds). A device embeds its label prompts once
and then runs only the image tower per camera frame; both embeddings are compared as the
original model compares them (ondevice.zero_shot_scores: softmax over the labels for CLIP,
a sigmoid per label for SigLIP, with the model's own logit scale and bias).

A recipe written for vision models quantises the image tower; one written for text
encoders the text tower; one for every family (fp16, weight-only int8) both; the other
tower stays at full precision (edgeport.parts). Validation: the worst image-embedding and
prompt-embedding cosines against PyTorch, and zero-shot top-1 agreement of every
validation image against the label prompts (the original's label, picked by the converted
towers). Default gates: cosines >= 0.99, agreement >= 0.98.

Images are the vision family's (crops of scikit-image's photographs, or `--samples DIR`);
labels are the photographs' subjects, or `labels.txt` in the user's folder (one per line).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeport.backends import PartSource
from edgeport.errors import BadInputError, UnsupportedError
from edgeport.families import BenchWorkload, Prepared
from edgeport.families.vision import (
    PIXELS,
    PREPROCESSOR,
    ImageSamples,
    builtin_samples,
    golden_indices,
    image_side,
    preprocessor_config,
    transformer_activation_mb,
    user_samples,
)
from edgeport.runners import ondevice
from edgeport.validate import Evaluation, ReferenceModel, compare, gated_metric, run_batches

if TYPE_CHECKING:
    from edgeport.backends import ExportedModel, Feeds, InferenceSession
    from edgeport.planner import Objective
    from edgeport.schemas import (
        DeviceProfile,
        GoldenSpec,
        ModelDims,
        ModelInfo,
        Tolerance,
        ValidationReport,
    )
    from edgeport.validate import MetricList

TASK = ondevice.ZERO_SHOT_TASK
TOKENIZER = "tokenizer.json"
LABELS_FILE = "labels.txt"
# transformers' zero-shot-image-classification pipeline writes prompts this way.
PROMPT_TEMPLATE = "This is a photo of {}."
# Other phrasings of the same labels: calibration prompts, never the validated ones.
CALIBRATION_TEMPLATES = ("a photo of a {}.", "a picture of the {}.", "{}", "a close-up of a {}.")
# Model types whose towers are `get_image_features` / `get_text_features`, and whether
# the text tower takes an attention mask (SigLIP's does not: it pads to max_length).
MODEL_TYPES = {"clip": True, "siglip": False}
MAX_USER_LABELS = 1000


@dataclass(frozen=True)
class ZeroShotSamples:
    images: ImageSamples
    labels: tuple[str, ...]
    labels_origin: str

    @property
    def builtin(self) -> bool:
        return self.images.builtin

    def describe(self) -> str:
        return f"{self.images.describe()}, against {len(self.labels)} labels {self.labels_origin}"


def _builtin_labels() -> tuple[str, ...]:
    from edgeport.image_samples import photograph_labels

    return tuple(photograph_labels())


def _user_labels(folder: Path) -> tuple[str, ...] | None:
    path = folder / LABELS_FILE
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: unreadable: {exc}") from exc
    labels = tuple(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not 2 <= len(labels) <= MAX_USER_LABELS:
        raise BadInputError(
            f"{path}: {len(labels)} distinct labels; need 2 to {MAX_USER_LABELS}, one per line"
        )
    return labels


def _config(folder: Path) -> dict[str, Any]:
    from edgeport.hub import read_config

    return read_config(folder)


def _sub(config: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _int(config: Mapping[str, Any], key: str, default: int) -> int:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _check_tokenizer(folder: Path) -> None:
    if not (folder / TOKENIZER).is_file():
        raise UnsupportedError(
            f"{folder}: no {TOKENIZER}; the device tokenises label prompts with the "
            "tokenizers library, which needs the fast tokenizer (SigLIP v1 has none)"
        )


def _scalar(folder: Path, name: str) -> float | None:
    """A scalar weight (logit_scale, logit_bias) read from the safetensors files."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "numpy") as weights:
            if name in weights.keys():  # noqa: SIM118 (safe_open has no __contains__)
                return float(np.asarray(weights.get_tensor(name)).reshape(-1)[0])
    return None


class ImageText:
    """CLIP-style zero-shot classifiers: an image tower and a text tower, shipped apart."""

    id = "image-text"
    tasks = (TASK,)
    task_aliases: tuple[tuple[str, str], ...] = ()
    decodes = False
    # The device tokenises prompts with the `tokenizers` library, on every runtime.
    reads_text = False
    pads_tokens = False
    encoder_decoder = False
    default_objective: Objective = "latency"
    batch = 8

    def export_parts(self, model: ModelInfo) -> tuple[PartSource, ...]:
        masked = MODEL_TYPES.get(model.model_type, True)
        return (
            PartSource("image", "vision", "get_image_features", (PIXELS,), ondevice.IMAGE_EMBEDS),
            PartSource(
                "text",
                "encoder",
                "get_text_features",
                ("input_ids", "attention_mask") if masked else ("input_ids",),
                ondevice.TEXT_EMBEDS,
                per_input=False,  # label prompts are embedded once
            ),
        )

    def load_samples(self, path: Path | None) -> ZeroShotSamples:
        if path is None:
            return ZeroShotSamples(
                builtin_samples(), _builtin_labels(), "(the photographs' subjects)"
            )
        labels = _user_labels(path)
        if labels is None:
            return ZeroShotSamples(
                user_samples(path), _builtin_labels(), f"(built in; no {LABELS_FILE} in the folder)"
            )
        return ZeroShotSamples(user_samples(path), labels, f"from {path.name}/{LABELS_FILE}")

    def inspect(self, folder: Path, config: dict[str, Any], task: str) -> dict[str, Any]:
        from edgeport.schemas import ModelDims

        model_type = config.get("model_type")
        if model_type not in MODEL_TYPES:
            raise UnsupportedError(
                f"zero-shot image classification supports {', '.join(MODEL_TYPES)} models, "
                f"not {model_type!r}"
            )
        preprocessor_config(folder)
        _check_tokenizer(folder)
        text, vision = _sub(config, "text_config"), _sub(config, "vision_config")
        hidden = _int(vision, "hidden_size", 768)
        heads = _int(vision, "num_attention_heads", 12)
        # The image tower is what runs per frame: its dimensions are the model's.
        dims: ModelDims = ModelDims(
            hidden_size=hidden,
            num_layers=_int(vision, "num_hidden_layers", 12),
            num_attention_heads=heads,
            num_key_value_heads=heads,
            head_dim=hidden // heads if heads else None,
        )
        return {
            "pooling": "none",
            "max_length": _int(text, "max_position_embeddings", 77 if model_type == "clip" else 64),
            "dims": dims,
        }

    def estimate_activation_mb(
        self, model: ModelInfo, profile: DeviceProfile, kv_cache_bytes: int = 4
    ) -> float:
        """The image tower's tokens with their attention (a vision transformer)."""
        vision = _sub(_config(model.local_path), "vision_config")
        return transformer_activation_mb(
            image_side(model.local_path),
            _int(vision, "patch_size", 16),
            model.dims.hidden_size or 768,
            model.dims.num_attention_heads or 12,
        )

    def prepare_processor(
        self, model: ModelInfo, workdir: Path, *, trust_remote_code: bool
    ) -> Path:
        preprocessor_config(model.local_path)
        _check_tokenizer(model.local_path)
        return model.local_path

    def processor_files(self, folder: Path) -> list[Path]:
        return [folder / PREPROCESSOR, folder / TOKENIZER]

    def prepare(
        self,
        model: ModelInfo,
        processor_dir: Path,
        samples: ZeroShotSamples,
        exported: ExportedModel,
        reference: ReferenceModel,
    ) -> Prepared:
        config = preprocessor_config(processor_dir)
        spec = self.runtime_fields(model, processor_dir, ())
        image_part, text_part = self.export_parts(model)

        def image_feeds(images: Sequence[Any]) -> Feeds:
            return {PIXELS: ondevice.pixel_values(images, config)}

        def text_feeds(prompts: Sequence[str]) -> Feeds:
            encoded = ondevice.encode_prompts(processor_dir / TOKENIZER, prompts, spec)
            return {name: encoded[name] for name in text_part.input_names}

        def outputs(feeds: Feeds) -> dict[str, np.ndarray]:
            part = image_part if PIXELS in feeds else text_part
            return reference.run_method(part.method, feeds, part.output_name)

        images = list(samples.images.validation)
        singles = [image_feeds([image]) for image in images]
        batched = [
            image_feeds(images[start : start + self.batch])
            for start in range(0, len(images), self.batch)
            if len({s[PIXELS].shape for s in singles[start : start + self.batch]}) == 1
        ]
        prompts = [PROMPT_TEMPLATE.format(label) for label in samples.labels]
        # The prompts together (padded to the longest, as run.py sends them) and alone.
        texts = [text_feeds(prompts)] + [text_feeds([prompt]) for prompt in prompts]
        batches = singles + batched + texts
        evaluation = Evaluation(
            batches=batches,
            reference=[outputs(batch) for batch in batches],
            output_names=(ondevice.IMAGE_EMBEDS, ondevice.TEXT_EMBEDS),
            calibration_samples=len(samples.images.calibration),
            validation_samples=len(images),
            notes=(
                f"validated on {samples.describe()}",
                f"prompts {PROMPT_TEMPLATE!r}; each image run alone and in batches of "
                f"{self.batch}; pixels from {PREPROCESSOR} by the bundle's own preprocessing",
            ),
            texts=(*samples.images.validation_names, *prompts),
        )
        # Each template's prompts together (the mixed-precision search scores zero-shot
        # agreement against every label at once: one prompt alone always "agrees") and
        # each prompt alone.
        phrasings = [[t.format(label) for label in samples.labels] for t in CALIBRATION_TEMPLATES]
        calibration = (
            [image_feeds([image]) for image in samples.images.calibration]
            + [text_feeds(prompts) for prompts in phrasings]
            + [text_feeds([prompt]) for prompts in phrasings for prompt in prompts]
        )
        search = Evaluation(
            batches=calibration,
            reference=[outputs(batch) for batch in calibration],
            output_names=evaluation.output_names,
            calibration_samples=len(calibration),
            validation_samples=0,
        )
        return Prepared(
            evaluation=evaluation,
            calibration=calibration,
            bench=BenchWorkload(singles[0]),  # a camera's frame; prompts are embedded once
            search=search,
        )

    def validate(
        self,
        model: ModelInfo,
        session: InferenceSession,
        evaluation: Evaluation,
        tolerance: Tolerance,
    ) -> ValidationReport:
        # A PartSessions: each batch goes to the tower whose inputs it carries.
        outputs = run_batches(session.run, evaluation.batches)
        spec = self.runtime_fields(model, model.local_path, ())

        def metrics(
            model: ModelInfo,
            evaluation: Evaluation,
            candidate: Sequence[Mapping[str, np.ndarray]],
            tolerance: Tolerance,
            generations: Sequence[Sequence[int]] = (),
        ) -> MetricList:
            values = ondevice.zero_shot_metrics(evaluation.reference, candidate, spec)
            return [
                gated_metric(metric, values[metric], tolerance, field, True)
                for metric, field in self.thresholds(model.task)
            ]

        return compare(model, evaluation, outputs, tolerance, metrics)

    def thresholds(self, task: str) -> tuple[tuple[str, str], ...]:
        return (
            ("zero_shot_top1_agreement", "top1_agreement_min"),
            ("image_embedding_cosine_min", "embedding_cosine_min"),
            ("text_embedding_cosine_min", "embedding_cosine_min"),
        )

    def runner_template(self, runner: str) -> str | None:
        return "zero_shot.py" if runner in ondevice.RUNTIMES else None

    def device_packages(self, runner: str) -> list[str]:
        return ["pillow", "tokenizers"]

    def write_golden(
        self,
        folder: Path,
        model: ModelInfo,
        evaluation: Evaluation,
        samples: ZeroShotSamples,
        tolerance: Tolerance,
        input_names: Sequence[str],
        output_names: Sequence[str],
    ) -> GoldenSpec | None:
        """Six validation images through the image tower and the label prompts (one
        padded batch) through the text tower, with the original's embeddings; verify.py
        gates them with the same formulas, zero-shot agreement included."""
        from edgeport.golden import thresholds, write_npz
        from edgeport.schemas import GoldenSpec

        count = evaluation.validation_samples
        if not count:
            return None
        chosen = golden_indices(count)
        # The batches: image singles (one per validation image) first, the prompts
        # together right after the image batches.
        prompts_index = next(i for i, batch in enumerate(evaluation.batches) if PIXELS not in batch)
        samples_at = [*chosen, prompts_index]
        arrays: dict[str, np.ndarray] = {}
        for slot, index in enumerate(samples_at):
            batch, reference = evaluation.batches[index], evaluation.reference[index]
            for name, value in batch.items():
                arrays[ondevice.golden_keys(slot, name, "input")] = np.asarray(value)
            for name, value in reference.items():
                arrays[ondevice.golden_keys(slot, name, "output")] = np.asarray(
                    value, dtype=np.float32
                )
        write_npz(folder / ondevice.GOLDEN_FILE, arrays)
        names = evaluation.texts
        prompts = [PROMPT_TEMPLATE.format(label) for label in samples.labels]
        return GoldenSpec(
            file=ondevice.GOLDEN_FILE,
            texts=[names[i] for i in chosen] + [" | ".join(prompts)[:256]],
            texts_redacted=not samples.builtin,
            tokens=[int(np.prod(evaluation.batches[i][PIXELS].shape[-2:])) for i in chosen]
            + [int(evaluation.batches[prompts_index]["input_ids"].size)],
            input_names=list(dict.fromkeys(n for i in samples_at for n in evaluation.batches[i])),
            output_names=list(evaluation.output_names),
            sample_parts=["image"] * len(chosen) + ["text"],
            thresholds=thresholds(self.thresholds(model.task), tolerance),
            reference="embeddings of the original PyTorch model's towers on the build host",
        )

    def runtime_fields(
        self, model: ModelInfo, processor_dir: Path, output_names: Sequence[str]
    ) -> dict[str, Any]:
        """How run.py writes, tokenises and scores label prompts."""
        config = _config(model.local_path)
        text = _sub(config, "text_config")
        scale = _scalar(model.local_path, "logit_scale")
        if scale is None:
            raise UnsupportedError(f"{model.local_path}: no logit_scale in the safetensors weights")
        bias = _scalar(model.local_path, "logit_bias")
        siglip = not MODEL_TYPES.get(model.model_type, True)
        return {
            "preprocessor": PREPROCESSOR,
            "prompt_template": PROMPT_TEMPLATE,
            "max_length": model.max_length,
            "padding": "max_length" if siglip else "longest",
            "pad_token_id": _pad_token_id(processor_dir, text),
            "scores": "sigmoid" if bias is not None else "softmax",
            "logit_scale": float(np.exp(scale)),
            "logit_bias": bias,
        }


def _pad_token_id(folder: Path, text_config: Mapping[str, Any]) -> int:
    """The tokenizer's pad token (what transformers pads prompts with), else the config's."""
    from edgeport.hub import read_json_file

    path = folder / TOKENIZER
    data = read_json_file(path) if path.is_file() else {}
    padding = data.get("padding") if isinstance(data, dict) else None
    if isinstance(padding, dict) and isinstance(padding.get("pad_id"), int):
        return int(padding["pad_id"])
    special = folder / "special_tokens_map.json"
    special_map = read_json_file(special) if special.is_file() else {}
    pad = special_map.get("pad_token") if isinstance(special_map, dict) else None
    if isinstance(pad, dict):
        pad = pad.get("content")
    if isinstance(pad, str) and isinstance(data, dict):
        for token in data.get("added_tokens") or []:
            if isinstance(token, dict) and token.get("content") == pad:
                return int(token["id"])
    return _int(text_config, "pad_token_id", 0)


FAMILY = ImageText()
