"""The plain fp32 export of a model for one target: afresh, or from a cache folder.

`edgeport build` converts one model for several profiles; the export (minutes, and the
PyTorch model in memory) is the same for all of them, so it is made once per cache folder,
keyed by model path, commit, target, task and trust_remote_code, and copied into each
conversion's work folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeport.backends import ExportedModel, PartSource, get_backend

if TYPE_CHECKING:
    from edgeport.schemas import ModelInfo, Target

_CACHE_META = "export.json"


def export_model(
    target: Target, info: ModelInfo, workdir: Path, *, trust_remote_code: bool, cache: Path | None
) -> ExportedModel:
    """The fp32 export for `target` in `workdir`, whole or as the parts the model's family
    names; reused from `cache` when one is given."""
    from edgeport.families import family_of

    parts = family_of(info).export_parts(info)
    if cache is None:
        return get_backend(target).export(
            info, workdir, trust_remote_code=trust_remote_code, parts=parts
        )
    return cached_export(
        target, info, workdir, trust_remote_code=trust_remote_code, cache=cache, parts=parts
    )


def _cache_key(
    target_id: str, info: ModelInfo, trust_remote_code: bool, parts: Sequence[PartSource]
) -> str:
    fields = [
        str(info.local_path.resolve()),
        info.commit or "",
        target_id,
        info.task,
        str(trust_remote_code),
        *(f"{p.name}:{p.method}:{','.join(p.input_names)}:{p.output_name}" for p in parts),
    ]
    return hashlib.sha256("\0".join(fields).encode("utf-8")).hexdigest()[:24]


def _meta(exported: ExportedModel) -> dict[str, Any]:
    return {
        "model_file": exported.model_file,
        "input_names": list(exported.input_names),
        "output_names": list(exported.output_names),
        "part": exported.part,
        "kind": exported.kind,
        "parts": [_meta(part) for part in exported.parts],
    }


def _from_meta(target_id: str, directory: Path, meta: dict[str, Any]) -> ExportedModel:
    return ExportedModel(
        target_id,
        directory,
        meta["model_file"],
        tuple(meta["input_names"]),
        tuple(meta["output_names"]),
        part=meta.get("part", ""),
        kind=meta.get("kind", ""),
        parts=tuple(_from_meta(target_id, directory, p) for p in meta.get("parts", [])),
    )


def cached_export(
    target: Target,
    info: ModelInfo,
    workdir: Path,
    *,
    trust_remote_code: bool,
    cache: Path,
    parts: Sequence[PartSource] = (),
) -> ExportedModel:
    """The fp32 export for (model path/commit, target, task), made once per cache folder.

    A hit is copied into `workdir`, so the candidates of one conversion never write into
    the export another conversion reuses. Safe for concurrent conversions sharing `cache`
    (Ray workers on shared storage): an entry appears whole, by renaming a folder written
    beside it, and is never replaced once there; two that miss at once both export, and
    the first one stored is kept.
    """
    entry = cache / _cache_key(target.id, info, trust_remote_code, parts)
    meta_path = entry / _CACHE_META
    if not meta_path.is_file():
        exported = get_backend(target).export(
            info, workdir, trust_remote_code=trust_remote_code, parts=parts
        )
        cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{entry.name}.partial-", dir=cache))
        shutil.copytree(exported.directory, partial / "export")
        meta = {
            **_meta(exported),
            "relative_dir": exported.directory.relative_to(workdir).as_posix()
            if exported.directory.is_relative_to(workdir)
            else "export",
        }
        (partial / _CACHE_META).write_text(json.dumps(meta), encoding="utf-8")
        try:
            # Atomic, and never over an entry another conversion (a Ray worker sharing
            # the folder) stored meanwhile: theirs may be being read.
            partial.rename(entry)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)  # same key, same export: keep theirs
        return exported
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    directory = workdir / meta["relative_dir"]
    shutil.copytree(entry / "export", directory)
    return _from_meta(target.id, directory, meta)
