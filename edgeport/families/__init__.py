"""Model families: each one module in this package, found here without a hand-kept list.

A family owns everything that differs between kinds of model: the optimum tasks it serves
(so `--task` accepts what optimum-cli accepts), its built-in samples and the user's
`--samples`, how inputs are prepared (tokenizer, image processor), the reference outputs,
the metrics and default tolerances, validation of a session, golden data, the family
part of the manifest's runtime section, the files copied beside the model, and its
runner per target runner flavour. The pipeline, planner, bundle writer and verifier ask
the family of a model (`family_of`) and never test which one it is.

A new family is one module here that defines a module-level `FAMILY` object satisfying
`Family`; plus, when its runners are new, the run.py template(s) in edgeport/runners/ and
the formulas its bundles run in edgeport/runners/ondevice.py.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgeport.errors import UnsupportedError

if TYPE_CHECKING:
    from edgeport.backends import ExportedModel, Feeds, InferenceSession, PartSource
    from edgeport.planner import Objective
    from edgeport.schemas import DeviceProfile, GoldenSpec, ModelInfo, Tolerance, ValidationReport
    from edgeport.validate import Evaluation, ReferenceModel


@dataclass(frozen=True)
class BenchWorkload:
    """What bench.py times: one batch of feeds, or greedy decoding from a prompt."""

    feeds: Feeds
    new_tokens: int = 0  # > 0: decode this many tokens from feeds["input_ids"] with the cache


@dataclass(frozen=True)
class Prepared:
    evaluation: Evaluation
    calibration: list[Feeds]
    bench: BenchWorkload
    # Calibration inputs with reference outputs: what the sensitivity search may look
    # at, so the validation inputs stay unseen until the final gate.
    search: Evaluation | None = None


class Samples(Protocol):
    """Calibration and validation inputs of one family (texts, images...), disjoint."""

    builtin: bool

    def describe(self) -> str: ...


class Family(Protocol):
    id: str
    # Optimum task names served, and other names for them (`sentence-similarity`).
    tasks: tuple[str, ...]
    task_aliases: tuple[tuple[str, str], ...]  # (alias, task)
    # What the winner minimises when the user does not say.
    default_objective: Objective
    # Generates token by token through a KV cache: memory-bound decoding, tokens/s
    # estimates and the cache in the memory estimate.
    decodes: bool
    # Inputs are token ids (a tokenizer ships with the model, converted for OpenVINO).
    reads_text: bool
    # Inputs are padded token batches: padding removal and encoder fusion apply.
    pads_tokens: bool
    # An encoder and a decoder with a KV cache (Whisper, T5), exported by optimum as parts.
    encoder_decoder: bool

    def load_samples(self, path: Path | None) -> Samples: ...

    def export_parts(self, model: ModelInfo) -> tuple[PartSource, ...]:
        """The graphs to cut out of the task model and export one by one (CLIP's image
        and text towers); () exports the model as optimum does, as one graph."""

    def inspect(self, folder: Path, config: dict[str, Any], task: str) -> dict[str, Any]:
        """Family-specific ModelInfo fields read from the model folder (no weights)."""

    def estimate_activation_mb(
        self, model: ModelInfo, profile: DeviceProfile, kv_cache_bytes: int = 4
    ) -> float:
        """Peak activation memory of one inference at the profile's typical input size,
        a KV cache counted at `kv_cache_bytes` per element (the target's)."""

    def prepare_processor(
        self, model: ModelInfo, workdir: Path, *, trust_remote_code: bool
    ) -> Path:
        """A folder with what turns raw inputs into tensors (tokenizer, image processor)."""

    def processor_files(self, folder: Path) -> list[Path]:
        """The files of that folder a bundle ships beside its model."""

    def prepare(
        self,
        model: ModelInfo,
        processor_dir: Path,
        samples: Any,
        exported: ExportedModel,
        reference: ReferenceModel,
    ) -> Prepared: ...

    def validate(
        self,
        model: ModelInfo,
        session: InferenceSession,
        evaluation: Evaluation,
        tolerance: Tolerance,
    ) -> ValidationReport: ...

    def thresholds(self, task: str) -> tuple[tuple[str, str], ...]:
        """(metric as verify.py reports it, Tolerance field that gates it) for a task."""

    def runner_template(self, runner: str) -> str | None:
        """run.py's template in edgeport/runners/ for a target's runner flavour."""

    def device_packages(self, runner: str) -> list[str]:
        """What run.py needs on the device besides the target's runtime and numpy."""

    def write_golden(
        self,
        folder: Path,
        model: ModelInfo,
        evaluation: Evaluation,
        samples: Any,
        tolerance: Tolerance,
        input_names: Sequence[str],
        output_names: Sequence[str],
    ) -> GoldenSpec | None: ...

    def runtime_fields(
        self, model: ModelInfo, processor_dir: Path, output_names: Sequence[str]
    ) -> dict[str, Any]:
        """The family's fields of the manifest's runtime section (what run.py reads)."""


@functools.cache
def families() -> dict[str, Family]:
    """Every family module in this package, by family id."""
    found: dict[str, Family] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        family = getattr(module, "FAMILY", None)
        if family is not None:
            found[family.id] = family
    return found


def family_of(model: ModelInfo) -> Family:
    try:
        return families()[model.family]
    except KeyError as exc:
        raise UnsupportedError(f"{model.family} models are not supported yet") from exc


def task_aliases() -> dict[str, str]:
    return {alias: task for f in families().values() for alias, task in f.task_aliases}


def supported_tasks() -> dict[str, str]:
    """Optimum task name -> family id, aliases included."""
    tasks = {task: f.id for f in families().values() for task in f.tasks}
    return tasks | {alias: tasks[task] for alias, task in task_aliases().items()}


def normalise_task(task: str) -> str:
    task = task_aliases().get(task, task)
    if task not in supported_tasks():
        supported = ", ".join(sorted(t for t in supported_tasks() if t not in task_aliases()))
        raise UnsupportedError(f"task {task!r} is not supported yet (supported: {supported})")
    return task


def family_for_task(task: str) -> Family:
    return families()[supported_tasks()[normalise_task(task)]]
