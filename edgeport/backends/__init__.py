"""One small class per runtime behind one Protocol: export, build a candidate, load, run.

The pipeline only talks to `Backend`; heavy imports (torch, onnxruntime, openvino) live
inside the methods so that planning and `edgeport --help` never pay for them. Which class
serves a target is data: the `backend` field of `targets/<id>.yaml`, so adding a target
is one YAML file plus one module, with no list here to keep in step.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from edgeport.errors import UnsupportedError

if TYPE_CHECKING:
    import numpy as np

    from edgeport.schemas import Candidate, ModelInfo, Target

Feeds = dict[str, "np.ndarray"]


@dataclass(frozen=True)
class PartSource:
    """One graph of a multi-part model: a method of the task's PyTorch model (CLIP's
    `get_image_features`), exported alone with these input and output names; or, when
    `method` is "", the graph optimum's exporter writes for the component `name` of the
    whole task ("encoder", "decoder": Whisper's and T5's, the decoder with its KV cache),
    which each backend knows by its file name.

    `kind` is the family whose recipes fit the part ("vision" for an image tower,
    "encoder" for a text tower): a candidate's recipe quantises the parts of its kind and
    leaves the others at full precision.
    """

    name: str
    kind: str
    method: str = ""
    input_names: tuple[str, ...] = ()
    output_name: str = ""
    # False for a part a device runs once, not per input (CLIP's text tower embeds the
    # labels once): recipes written for its kind alone are not worth a candidate.
    per_input: bool = True

    @property
    def from_optimum(self) -> bool:
        return not self.method


@dataclass(frozen=True)
class ExportedModel:
    """The plain fp32 export for one target, shared by every candidate of that target.

    A multi-part model (CLIP's image and text towers) lists its graphs in `parts`, each
    an ExportedModel of one graph with its `part` name and `kind`; the top-level fields
    then describe the first part, the one a device runs per input (timed by the bench).
    """

    target_id: str
    directory: Path
    model_file: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    part: str = ""
    kind: str = ""
    parts: tuple[ExportedModel, ...] = ()


@dataclass(frozen=True)
class Artifact:
    """Files produced for one candidate; `model_file` is relative to `directory`.

    A multi-part artifact lists each part as an Artifact of its own in `parts` (each in
    its own directory; file names are distinct across parts, so a bundle stays flat), and
    its top-level fields are its first part's: what the bench times.
    """

    directory: Path
    model_file: str
    files: tuple[str, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    part: str = ""
    # The precision the part was built in (parts of one artifact may differ).
    precision: str = ""
    parts: tuple[Artifact, ...] = ()

    @property
    def model_path(self) -> Path:
        return self.directory / self.model_file

    @property
    def size_bytes(self) -> int:
        if self.parts:
            return sum(part.size_bytes for part in self.parts)
        return sum((self.directory / name).stat().st_size for name in self.files)

    @property
    def model_bytes(self) -> int:
        """The model's own files (graph and weights), without tokenizer files beside them."""
        if self.parts:
            return sum(part.model_bytes for part in self.parts)
        stem = self.model_file.rsplit(".", 1)[0]
        return sum(
            (self.directory / name).stat().st_size for name in self.files if name.startswith(stem)
        )

    def single_parts(self) -> tuple[Artifact, ...]:
        """Every graph of the artifact: its parts, or itself for a one-graph model."""
        return self.parts or (self,)


def exported_parts(
    target_id: str,
    directory: Path,
    parts: Sequence[tuple[PartSource, str, tuple[tuple[str, ...], tuple[str, ...]]]],
) -> ExportedModel:
    """A multi-part export from (part, model file, (input names, output names)) rows,
    all in `directory`; the first part is also the top-level graph."""
    graphs = tuple(
        ExportedModel(target_id, directory, file, inputs, outputs, part=part.name, kind=part.kind)
        for part, file, (inputs, outputs) in parts
    )
    first = graphs[0]
    return ExportedModel(
        target_id,
        directory,
        first.model_file,
        first.input_names,
        first.output_names,
        parts=graphs,
    )


class InferenceSession(Protocol):
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@runtime_checkable
class DecoderSession(Protocol):
    """A language model with a KV cache: `run` scores a full window (empty past, positions
    and cache inputs filled in by the session), `generate` decodes greedily through the cache."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]: ...


@dataclass(frozen=True)
class FunctionSession:
    """A run function as a session: a seq2seq decoder's, which keeps its own KV cache
    (edgeport.runners.ondevice.greedy_decode drives it)."""

    run_function: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run_function(feeds)


class Backend(Protocol):
    target_id: str

    def export(
        self,
        model: ModelInfo,
        workdir: Path,
        *,
        trust_remote_code: bool,
        parts: Sequence[PartSource] = (),
    ) -> ExportedModel:
        """Export the original model at full precision: whole, or as the given parts
        (each its own graph, made from the task model by backends/torch_parts.py)."""

    def build(
        self,
        exported: ExportedModel,
        candidate: Candidate,
        model: ModelInfo,
        calibration: Sequence[Feeds],
        workdir: Path,
    ) -> Artifact:
        """Optimise and quantise the export as the candidate's recipe says."""

    def load(self, artifact: Artifact, device: str, threads: int) -> InferenceSession:
        """An inference session on this host (validation runs here, on CPU), for an
        artifact of one graph (edgeport.parts loads each part of the others)."""

    @staticmethod
    def host_devices() -> list[str]:
        """Devices or execution providers the runtime reports on this host, as the target's
        YAML spells them (`edgeport profiles detect`); may import the runtime."""


def get_backend(target: Target) -> Backend:
    """The backend named by a target's `backend` ("package.module:Class"), imported now.

    The target comes from the caller's catalogue (built-in or user folders), never looked
    up here: this package stays below the catalogue. A missing module or class is an
    UnsupportedError; a third-party module that the backend imports and that is not
    installed stays a ModuleNotFoundError, so the caller can name the package to install
    (edgeport.dependencies.install_hint).
    """
    return backend_from_spec(target.backend)


def backend_from_spec(spec: str) -> Backend:
    """The backend class `spec` ("package.module:Class") names, instantiated: for a child
    process (bench.py) that is handed the spec rather than the whole target."""
    backend: Backend = _backend_class(spec)()
    return backend


def _backend_class(spec: str) -> type:
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not _is_package_of(exc.name, module_name):
            raise  # a dependency of the backend: the caller turns it into an install hint
        raise UnsupportedError(f"backend {spec!r}: no module {module_name!r}") from exc
    except ImportError as exc:  # e.g. a runtime's native library failing to load
        reason = " ".join(str(exc).split())[:200]
        raise UnsupportedError(f"backend {spec!r} cannot be imported: {reason}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise UnsupportedError(
            f"backend {spec!r}: module {module_name!r} has no class {class_name!r}"
        )
    return cls


def _is_package_of(missing: str, module_name: str) -> bool:
    """True when `missing` is `module_name` itself or one of its parent packages."""
    return module_name == missing or module_name.startswith(f"{missing}.")


def host_targets(targets: Iterable[Target]) -> frozenset[str]:
    """Targets this host can export for: their host modules and their backend module are
    importable here (checked without importing any of them, so planning stays fast)."""
    available = set()
    for target in targets:
        backend_module = target.backend.partition(":")[0]
        modules = [*target.host_modules, backend_module]
        if all(_module_exists(name) for name in modules):
            available.add(target.id)
    return frozenset(available)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # parent package missing
        return False
