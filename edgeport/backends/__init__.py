"""One small class per runtime behind one Protocol: export, build a candidate, load, run.

The pipeline only talks to `Backend`; heavy imports (torch, onnxruntime, openvino) live
inside the methods so that planning and `edgeport --help` never pay for them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from edgeport.errors import UnsupportedError

if TYPE_CHECKING:
    import numpy as np

    from edgeport.schemas import Candidate, ModelInfo, Target

Feeds = dict[str, "np.ndarray"]


@dataclass(frozen=True)
class ExportedModel:
    """The plain fp32 export for one target, shared by every candidate of that target."""

    target_id: str
    directory: Path
    model_file: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


@dataclass(frozen=True)
class Artifact:
    """Files produced for one candidate; `model_file` is relative to `directory`."""

    directory: Path
    model_file: str
    files: tuple[str, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def model_path(self) -> Path:
        return self.directory / self.model_file

    @property
    def size_bytes(self) -> int:
        return sum((self.directory / name).stat().st_size for name in self.files)

    @property
    def model_bytes(self) -> int:
        """The model's own files (graph and weights), without tokenizer files beside them."""
        stem = self.model_file.rsplit(".", 1)[0]
        return sum(
            (self.directory / name).stat().st_size for name in self.files if name.startswith(stem)
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


class Backend(Protocol):
    target_id: str

    def export(self, model: ModelInfo, workdir: Path, *, trust_remote_code: bool) -> ExportedModel:
        """Export the original model at full precision."""

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
        """An inference session on this host (validation runs here, on CPU)."""


_BACKENDS = {
    "onnxruntime": "edgeport.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgeport.backends.openvino:OpenVinoBackend",
}


def get_backend(target_id: str) -> Backend:
    try:
        module_name, class_name = _BACKENDS[target_id].split(":")
    except KeyError as exc:
        raise UnsupportedError(f"no backend for target {target_id!r}") from exc
    backend: Backend = getattr(importlib.import_module(module_name), class_name)()
    return backend


def host_targets(targets: Iterable[Target]) -> frozenset[str]:
    """Targets whose host-side modules are importable here (checked without importing)."""
    available = set()
    for target in targets:
        if target.id not in _BACKENDS:
            continue
        if all(_module_exists(name) for name in target.host_modules):
            available.add(target.id)
    return frozenset(available)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # parent package missing
        return False
