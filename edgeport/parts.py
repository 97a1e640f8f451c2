"""Multi-part models (CLIP's image and text towers): built, loaded and run part by part.

Backends only ever see one graph. This module is the loop around them: each part of an
export is built alone, with the candidate's recipe when the recipe was written for the
part's kind (a vision recipe for an image tower) and at full precision otherwise, fed the
calibration inputs that carry its input names. A one-part model goes straight to the
backend.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgeport.backends import Artifact, ExportedModel, InferenceSession
from edgeport.errors import UnsupportedError

if TYPE_CHECKING:
    import numpy as np

    from edgeport.backends import Backend, Feeds
    from edgeport.schemas import Candidate, ModelInfo


def recipe_fits(candidate: Candidate, kind: str) -> bool:
    """Whether the candidate's recipe was written for a part of this kind (a recipe
    that names no family fits every part: fp16, weight-only int8)."""
    families = candidate.recipe.requires.families
    return not families or kind in families


def part_candidate(candidate: Candidate, part: ExportedModel) -> Candidate:
    """The candidate a part is built with: its recipe, or the same target at full
    precision for a part the recipe was not written for or the search keeps in float."""
    if recipe_fits(candidate, part.kind) and part.part not in candidate.float_parts:
        return candidate
    from edgeport.schemas import GraphOptimization, Quantization

    recipe = candidate.recipe.model_copy(
        update={"quantize": Quantization(), "graph": GraphOptimization()}
    )
    return candidate.model_copy(update={"recipe": recipe})


def feeds_for(part: ExportedModel, feeds: Sequence[Feeds]) -> list[Feeds]:
    """The inputs that carry every input name of the part, cut to those names."""
    names = set(part.input_names)
    return [{k: v for k, v in f.items() if k in names} for f in feeds if names <= f.keys()]


def build_parts(
    backend: Backend,
    exported: ExportedModel,
    candidate: Candidate,
    model: ModelInfo,
    calibration: Sequence[Feeds],
    workdir: Path,
) -> Artifact:
    """The candidate's artifact: the backend's build for one graph, else each part built
    alone in workdir/<part> and gathered in workdir/out."""
    if not exported.parts:
        return backend.build(exported, candidate, model, calibration, workdir)
    built: list[Artifact] = []
    shipped: set[str] = set()
    for part in exported.parts:
        own = part_candidate(candidate, part)
        feeds = feeds_for(part, calibration)
        if own.recipe.quantize.scheme == "int8-static" and not feeds:
            raise UnsupportedError(
                f"part {part.part}: no calibration inputs carry {list(part.input_names)}"
            )
        artifact = backend.build(part, own, model, feeds, workdir / part.part)
        clash = shipped.intersection(artifact.files)
        if clash:  # a bundle is flat: every file name must be unique across parts
            raise UnsupportedError(f"part {part.part}: {sorted(clash)} clash with another part's")
        shipped.update(artifact.files)
        notes = tuple(f"{part.part}: {note}" for note in artifact.notes)
        if part.part in candidate.float_parts:
            notes += (f"{part.part}: kept at fp32 (it missed the gate quantised)",)
        elif own is not candidate:
            kinds = "/".join(candidate.recipe.requires.families)
            notes += (f"{part.part}: kept at fp32 (the recipe is written for {kinds} parts)",)
        # Each part stays where its backend built it (backends may keep state keyed by
        # that path: OpenVINO's unfolded quantised graph for the sensitivity ranking).
        built.append(replace(artifact, notes=notes, part=part.part, precision=own.recipe.precision))
    first = built[0]
    return replace(first, notes=tuple(n for part in built for n in part.notes), parts=tuple(built))


class PartSessions(Mapping[str, InferenceSession]):
    """One session per part. `run` sends a batch to the part whose inputs it carries
    (pixels to the image tower, token ids to the text tower), so a family validates a
    multi-part model batch by batch as it validates a single graph."""

    def __init__(self, sessions: Mapping[str, InferenceSession]) -> None:
        self._sessions = dict(sessions)
        self.input_names = tuple(dict.fromkeys(n for s in sessions.values() for n in s.input_names))
        self.output_names = tuple(
            dict.fromkeys(n for s in sessions.values() for n in s.output_names)
        )

    def __getitem__(self, name: str) -> InferenceSession:
        return self._sessions[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    def part_for(self, feeds: Mapping[str, np.ndarray]) -> str:
        for name, session in self._sessions.items():
            if set(session.input_names) <= feeds.keys():
                return name
        raise UnsupportedError(f"no part takes inputs {sorted(feeds)}")

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._sessions[self.part_for(feeds)].run(feeds)


def load_parts(backend: Backend, artifact: Artifact, device: str, threads: int) -> InferenceSession:
    """A session for the artifact: the backend's own for one graph, PartSessions else."""
    if not artifact.parts:
        return backend.load(artifact, device, threads)
    return PartSessions({p.part: backend.load(p, device, threads) for p in artifact.parts})
