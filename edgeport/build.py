"""`edgeport build FILE`: convert every model x profile pair of a YAML build file, for CI.

Each pair gets its own bundle (and, by default, a reproducible archive), and the build
goes on after a failed pair; `index.json` records every pair's verdict, bundle, archive
and sha256, and the command's exit code is non-zero when any pair failed. The fp32
export of a model is made once per target and reused by every profile that needs it
(cached in a folder for the duration of the build).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeport.errors import BadInputError, EdgeportError
from edgeport.schemas import SLUG_PATTERN

if TYPE_CHECKING:
    from edgeport.backends import ExportedModel
    from edgeport.catalog import Catalog
    from edgeport.pipeline import Progress
    from edgeport.schemas import ModelInfo

INDEX_FILE = "index.json"
_CACHE_META = "export.json"


# --------------------------------------------------------------------------- build file


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    id: str = Field(description="Hub model id (org/name) or a local model folder.")
    revision: str | None = Field(default=None, description="Hub branch, tag or commit.")
    task: str | None = None
    recipes: list[str] | None = Field(default=None, description="Only consider these recipes.")
    name: str | None = Field(
        default=None, pattern=SLUG_PATTERN, description="Bundle name prefix (default: from the id)."
    )

    @property
    def bundle_prefix(self) -> str:
        base = self.name or self.id.rstrip("/").split("/")[-1]
        return f"{base}-{self.revision[:12]}" if self.revision and not self.name else base


class BuildFile(_Strict):
    models: list[ModelEntry] = Field(min_length=1)
    profiles: list[str] = Field(min_length=1, description="Profile ids or profile YAML paths.")
    out: Path = Field(
        default=Path("bundles"), description="Folder for bundles, archives, index.json."
    )
    objective: Literal["latency", "size", "accuracy"] | None = Field(
        default=None,
        description="None: latency for encoders, size for language models (as `convert`).",
    )
    archive: bool = True
    verify: bool = Field(
        default=True, description="Run every bundle's golden check after writing it."
    )
    accept_degraded: bool = False
    samples: Path | None = None
    search_budget_s: float = Field(default=1200.0, gt=0)

    def pairs(self) -> list[tuple[ModelEntry, str]]:
        return [(model, profile) for model in self.models for profile in self.profiles]


def load_build_file(path: Path) -> BuildFile:
    if not path.is_file():
        raise BadInputError(f"build file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BadInputError(f"{path}: not valid YAML: {exc}") from exc
    try:
        build = BuildFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(top level)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise BadInputError(f"{path}: {problems}") from exc
    names = [f"{model.bundle_prefix}-{Path(profile).stem}" for model, profile in build.pairs()]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise BadInputError(
            f"{path}: two pairs would write the same bundle: {', '.join(duplicates)}"
            " (give the models distinct `name`s)"
        )
    # Relative paths in the file are relative to the file, as in any build tool.
    updates: dict[str, Any] = {}
    if not build.out.is_absolute():
        updates["out"] = path.parent / build.out
    if build.samples is not None and not build.samples.is_absolute():
        updates["samples"] = path.parent / build.samples
    return build.model_copy(update=updates) if updates else build


# --------------------------------------------------------------------------- export cache


def _cache_key(target_id: str, info: ModelInfo, trust_remote_code: bool) -> str:
    parts = [
        str(info.local_path.resolve()),
        info.commit or "",
        target_id,
        info.task,
        str(trust_remote_code),
    ]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()[:24]


def cached_export(
    target_id: str, info: ModelInfo, workdir: Path, *, trust_remote_code: bool, cache: Path
) -> ExportedModel:
    """The fp32 export for (model path/commit, target, task), made once per cache folder.

    A hit is copied into `workdir`, so the candidates of one conversion never write into
    the export another conversion reuses.
    """
    from edgeport.backends import ExportedModel, get_backend

    entry = cache / _cache_key(target_id, info, trust_remote_code)
    meta_path = entry / _CACHE_META
    if not meta_path.is_file():
        exported = get_backend(target_id).export(info, workdir, trust_remote_code=trust_remote_code)
        cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{entry.name}.partial-", dir=cache))
        shutil.copytree(exported.directory, partial / "export")
        meta = {
            "model_file": exported.model_file,
            "input_names": list(exported.input_names),
            "output_names": list(exported.output_names),
            "relative_dir": exported.directory.relative_to(workdir).as_posix()
            if exported.directory.is_relative_to(workdir)
            else "export",
        }
        (partial / _CACHE_META).write_text(json.dumps(meta), encoding="utf-8")
        shutil.rmtree(entry, ignore_errors=True)
        partial.rename(entry)
        return exported
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    directory = workdir / meta["relative_dir"]
    shutil.copytree(entry / "export", directory)
    return ExportedModel(
        target_id,
        directory,
        meta["model_file"],
        tuple(meta["input_names"]),
        tuple(meta["output_names"]),
    )


# --------------------------------------------------------------------------- run


def _pair_record(model: ModelEntry, profile: str) -> dict[str, Any]:
    return {
        "model": model.id,
        "revision": model.revision,
        "commit": None,
        "profile": profile,
        "verdict": "error",
        "exit_code": None,
        "recipe": None,
        "bundle": None,
        "archive": None,
        "archive_sha256": None,
        "content_sha256": None,
        "verify": None,
        "error": None,
    }


def run_build(
    build: BuildFile,
    *,
    catalog: Catalog | None = None,
    progress: Progress | None = None,
    force: bool = False,
    convert: Callable[..., Any] | None = None,
) -> tuple[list[dict[str, Any]], Path]:
    """Convert every pair; returns the index records and the index path. Never stops early."""
    from edgeport.archive import pack
    from edgeport.pipeline import ConvertRequest, SilentProgress
    from edgeport.pipeline import convert as pipeline_convert
    from edgeport.verify import verify

    progress = progress or SilentProgress()
    run_convert = convert or pipeline_convert
    out = build.out
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    pairs = build.pairs()
    with tempfile.TemporaryDirectory(prefix="edgeport-build-") as tmp:
        cache = Path(tmp) / "exports"
        for number, (model, profile) in enumerate(pairs, start=1):
            record = _pair_record(model, profile)
            records.append(record)
            bundle = out / f"{model.bundle_prefix}-{Path(profile).stem}"
            progress.stage(f"[pair {number}/{len(pairs)}] {model.id} on {profile}")
            try:
                request = ConvertRequest(
                    model=model.id,
                    profile=profile,
                    out=bundle,
                    revision=model.revision,
                    task=model.task,
                    samples=build.samples,
                    recipes=frozenset(model.recipes) if model.recipes else None,
                    objective=build.objective,
                    search_budget_s=build.search_budget_s,
                    accept_degraded=build.accept_degraded,
                    force=force,
                    catalog=catalog,
                    export_cache=cache,
                )
                result = run_convert(request, progress)
                record["commit"] = result.plan.model.commit
                record["recipe"] = result.chosen.recipe_id if result.chosen else None
                record["verdict"] = result.verdict
                if result.bundle is None:
                    record["exit_code"] = 3
                    record["error"] = f"accuracy gate failed; report: {result.report}"
                    continue
                record["bundle"] = str(result.bundle)
                manifest = json.loads((result.bundle / "manifest.json").read_text(encoding="utf-8"))
                record["content_sha256"] = (manifest.get("reproducibility") or {}).get(
                    "content_sha256"
                )
                if build.verify:
                    checked = verify(result.bundle, runs=3)
                    record["verify"] = "passed" if checked["passed"] else "failed"
                    if not checked["passed"]:
                        record["exit_code"] = int(checked["exit_code"])
                        record["error"] = "verification failed: " + "; ".join(checked["failures"])
                        continue
                if build.archive:
                    info = pack(result.bundle, check=False)
                    record["archive"] = str(info.path)
                    record["archive_sha256"] = info.sha256
                record["exit_code"] = 0
            except EdgeportError as exc:
                record["error"] = str(exc)
                record["exit_code"] = exc.exit_code
            except Exception as exc:  # one broken pair must not hide the others' results
                record["error"] = f"{type(exc).__name__}: {exc}"
                record["exit_code"] = 1
            finally:
                progress.info(
                    f"{model.id} on {profile}: {record['verdict']}"
                    + (f" ({record['error']})" if record["error"] else "")
                )
    index = out / INDEX_FILE
    index.write_text(
        json.dumps({"format_version": 1, "pairs": records}, indent=2) + "\n", encoding="utf-8"
    )
    return records, index


def build_exit_code(records: list[dict[str, Any]]) -> int:
    """0 when every pair shipped a bundle; otherwise the first failed pair's exit code."""
    return next((int(r["exit_code"] or 1) for r in records if r["exit_code"] != 0), 0)
