"""`edgeport build FILE`: convert every model x profile pair of a YAML build file, for CI.

Each pair gets its own bundle (and, by default, a reproducible archive), and the build
goes on after a failed pair; `index.json` records every pair's verdict, bundle, archive
and sha256, and the command's exit code is non-zero when any pair failed. The fp32
export of a model is made once per target and reused by every profile that needs it
(cached in a folder for the duration of the build). With `--devices FILE` (a private
inventory: profile id -> ssh:// target), each bundle is also verified on a device of its
profile (`edgeport verify --on`), and a bundle that fails there fails the build.

One function builds one pair (build_pair); the local loop, a shard of a CI matrix
(`--shard I/N`: a fixed 1/N of the pairs, its own index.shard-I-of-N.json, joined by
`--merge`) and a Ray cluster (`--ray`, build_ray.py) all call it, so they write the same
bundles and the same records.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from edgeport.errors import BadInputError, EdgeportError
from edgeport.schemas import SLUG_PATTERN, Slug

if TYPE_CHECKING:
    from edgeport.catalog import Catalog
    from edgeport.progress import Progress

INDEX_FILE = "index.json"
# Where a Ray build keeps its fp32 exports by default: `out` is storage every worker sees.
EXPORT_CACHE_FOLDER = ".export-cache"


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
    max_size_mb: float | None = Field(
        default=None,
        gt=0,
        description="Hard limit on each bundle's model files in MiB (as `convert --max-size`).",
    )

    # The file it was read from (load_build_file), for messages; None when built in code.
    _source: Path | None = PrivateAttr(default=None)

    def pairs(self) -> list[tuple[ModelEntry, str]]:
        return [(model, profile) for model in self.models for profile in self.profiles]


MAX_BUILD_FILE_BYTES = 1024 * 1024
_SHOWN_PROBLEMS = 3


def _first_problems(problems: list[str], shown: int = _SHOWN_PROBLEMS) -> str:
    """The first `shown` problems on one line, and how many more there are."""
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (f" (and {more} more)" if more > 0 else "")


def load_build_file(path: Path) -> BuildFile:
    """Parse and validate a build file (syntax, keys, types); one-line BadInputError if not.

    What needs the catalogue (profiles, recipes) and the disk (model folders, samples) is
    checked by check_build, which run_build calls before converting anything.
    """
    from edgeport.catalog import echo, is_file, read_yaml_file, shorten

    if not is_file(path):
        raise BadInputError(f"build file not found: {shorten(str(path), 240)}")
    data = read_yaml_file(path, max_bytes=MAX_BUILD_FILE_BYTES, error=BadInputError)
    try:
        build = BuildFile.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(shorten(str(p), 40) for p in error['loc']) or '(top level)'}: "
            f"{shorten(str(error['msg']), 200)}"
            for error in exc.errors()
        ]
        raise BadInputError(f"{path}: {_first_problems(problems)}") from exc
    names = [f"{model.bundle_prefix}-{Path(profile).stem}" for model, profile in build.pairs()]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        shown = ", ".join(echo(name) for name in duplicates[:_SHOWN_PROBLEMS])
        more = len(duplicates) - _SHOWN_PROBLEMS
        raise BadInputError(
            f"{path}: two pairs would write the same bundle: {shown}"
            + (f" and {more} more" if more > 0 else "")
            + " (give the models distinct `name`s)"
        )
    # Relative paths in the file are relative to the file, as in any build tool.
    updates: dict[str, Any] = {}
    if not build.out.is_absolute():
        updates["out"] = path.parent / build.out
    if build.samples is not None and not build.samples.is_absolute():
        updates["samples"] = path.parent / build.samples
    build = build.model_copy(update=updates) if updates else build
    build._source = path
    return build


def _model_problems(index: int, model: ModelEntry, catalog: Catalog) -> list[str]:
    from edgeport.catalog import echo
    from edgeport.families import supported_tasks, task_aliases
    from edgeport.hub import is_folder, looks_like_hub_id, looks_like_path

    field = f"models.{index}"
    problems = []
    if looks_like_path(model.id):
        if not is_folder(Path(model.id).expanduser()):
            problems.append(f"{field}.id: model folder not found: {echo(model.id)}")
        if model.revision:
            problems.append(f"{field}.revision: applies to Hub ids, not to a local folder")
    elif not looks_like_hub_id(model.id):
        problems.append(f"{field}.id: not a Hub model id or an existing folder: {echo(model.id)}")
    if model.task is not None and model.task not in supported_tasks():
        supported = ", ".join(sorted(t for t in supported_tasks() if t not in task_aliases()))
        problems.append(
            f"{field}.task: {echo(model.task)} is not supported (supported: {supported})"
        )
    for number, recipe in enumerate(model.recipes or []):
        try:
            catalog.recipe(recipe)
        except BadInputError as exc:
            problems.append(f"{field}.recipes.{number}: {exc}")
    return problems


def check_build(build: BuildFile, catalog: Catalog | None = None) -> None:
    """Everything a build needs, checked before its first conversion.

    Every profile resolves through the catalogue (an id, `host`, or a valid profile file),
    every recipe id is known, every model is an existing folder or a well-formed Hub id
    (whether a Hub id exists is only known when it is downloaded), any task is supported,
    the samples file is readable, and `out` is not a file. Raises one BadInputError naming
    the build file, the field and the first problems, so a typo fails the build at once
    instead of after hours of conversions of the other pairs.
    """
    from edgeport.catalog import HOST_PROFILE_ID, is_file, load_catalog
    from edgeport.samples import read_samples_file

    catalog = catalog or load_catalog()
    problems: list[str] = []
    for index, model in enumerate(build.models):
        problems += _model_problems(index, model, catalog)
    for index, profile in enumerate(build.profiles):
        if profile == HOST_PROFILE_ID:
            continue  # probed on this machine when its pairs run
        try:
            catalog.profile(profile)
        except BadInputError as exc:
            problems.append(f"profiles.{index}: {exc}")
    if build.samples is not None:
        try:
            read_samples_file(build.samples)
        except BadInputError as exc:
            problems.append(f"samples: {exc}")
    if is_file(build.out):
        problems.append(f"out: {build.out} is a file, not a folder")
    if problems:
        source = build._source or "build file"
        # The messages carry lists of known ids: one problem keeps the line readable.
        raise BadInputError(f"{source}: {_first_problems(problems, shown=1)}")


# --------------------------------------------------------------------------- devices


class DeviceEntry(_Strict):
    target: str = Field(description="ssh://[user@]host[:port]")
    python: str = Field(default="python3", min_length=1, description="The device's Python.")
    ssh_options: list[str] = Field(default_factory=list, description="Passed as ssh -o.")
    runs: int = Field(default=5, ge=0, le=1000, description="Timed runs for latency.")

    @field_validator("target")
    @classmethod
    def _ssh_target(cls, value: str) -> str:
        from edgeport.device import parse_target

        try:
            parse_target(value)
        except BadInputError as exc:
            raise ValueError(str(exc)) from exc
        return value


class DeviceInventory(_Strict):
    """`--devices FILE`: which device verifies the bundles of each profile. Kept out of the
    profiles and the build file: host names and users are private to a lab or CI."""

    devices: dict[Slug, DeviceEntry] = Field(
        description="Profile id -> 'ssh://...' or {target, python, ssh_options, runs}."
    )

    @field_validator("devices", mode="before")
    @classmethod
    def _short_form(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: {"target": v} if isinstance(v, str) else v for k, v in value.items()}
        return value


def load_devices_file(path: Path) -> DeviceInventory:
    """Parse and validate a device inventory; one-line BadInputError naming the field."""
    from edgeport.catalog import is_file, read_yaml_file, shorten

    if not is_file(path):
        raise BadInputError(f"devices file not found: {shorten(str(path), 240)}")
    data = read_yaml_file(path, max_bytes=MAX_BUILD_FILE_BYTES, error=BadInputError)
    try:
        return DeviceInventory.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(shorten(str(p), 40) for p in error['loc']) or '(top level)'}: "
            f"{shorten(str(error['msg']), 200)}"
            for error in exc.errors()
        ]
        raise BadInputError(f"{path}: {_first_problems(problems)}") from exc


def _verify_on_device(
    bundle: Path, entry: DeviceEntry, record: dict[str, Any], progress: Progress
) -> bool:
    """Verify `bundle` on its device, keep the run beside it and summarise it in `record`;
    False (with the record's error and exit code set) when it did not pass."""
    from edgeport.device import run_summary, save_device_run, summary_line, verify_on_device

    try:
        run = verify_on_device(
            bundle,
            entry.target,
            python=entry.python,
            runs=entry.runs,
            ssh_options=entry.ssh_options,
        )
    except EdgeportError as exc:
        record["device_run"] = {"target": entry.target, "error": str(exc)}
        record["exit_code"] = exc.exit_code
        record["error"] = f"on {entry.target}: {exc}"
        return False
    record["device_run"] = run_summary(run, save_device_run(run, bundle))
    progress.info(summary_line(run))
    if not run["passed"]:
        record["exit_code"] = 3
        record["error"] = f"failed on {entry.target}: " + "; ".join(run["failures"])
    return bool(run["passed"])


# --------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """`--shard I/N`: the pairs a CI matrix job builds. Pairs are numbered in file order
    (each model with each profile, as `pairs()`), and pair k belongs to shard
    ((k - 1) mod N) + 1: the same split on any machine, whatever runs first."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        from edgeport.catalog import echo

        match = re.fullmatch(r"([0-9]{1,6})/([0-9]{1,6})", text.strip())
        if match is None:
            raise BadInputError(f"--shard: expected I/N, as in 1/4; got {echo(text)}")
        index, count = int(match[1]), int(match[2])
        if not 1 <= index <= count:
            raise BadInputError(f"--shard {index}/{count}: I must be between 1 and N")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, number: int) -> bool:
        """Whether pair `number` (1-based, file order) is this shard's."""
        return (number - 1) % self.count == self.index - 1

    @property
    def index_name(self) -> str:
        return f"index.shard-{self.index}-of-{self.count}.json"


_SHARD_INDEX = re.compile(r"index\.shard-([0-9]{1,6})-of-([0-9]{1,6})\.json")


def build_digest(build: BuildFile) -> str:
    """What a build converts, for telling shard indexes of different builds apart: the
    file's settings without `out`, with the samples file by content (not by path), so the
    shards of one build on machines with other checkouts agree."""
    from edgeport.runners.ondevice import sha256_file

    settings = build.model_dump(mode="json", exclude={"out", "samples"})
    settings["samples_sha256"] = sha256_file(build.samples) if build.samples else None
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- one pair


def pair_record(model: ModelEntry, profile: str) -> dict[str, Any]:
    """A pair's index record before it ran (verdict "error" until it ships)."""
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
        "device_run": None,
        "error": None,
    }


def pair_line(record: dict[str, Any]) -> str:
    """The progress line for a finished pair."""
    error = record["error"]
    return f"{record['model']} on {record['profile']}: {record['verdict']}" + (
        f" ({error})" if error else ""
    )


def bundle_folder(build: BuildFile, model: ModelEntry, profile: str) -> Path:
    return build.out / f"{model.bundle_prefix}-{Path(profile).stem}"


def build_pair(
    build: BuildFile,
    model: ModelEntry,
    profile: str,
    *,
    catalog: Catalog | None = None,
    export_cache: Path | None = None,
    force: bool = False,
    convert: Callable[..., Any] | None = None,
    devices: DeviceInventory | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Convert, verify and archive one pair of `build`; its index record.

    A function of its arguments only (a local build, each shard and each Ray task call it
    alike, so they write the same bundle), and it never raises for the pair's own
    failures: they are the record's verdict, exit code and error. `export_cache` is the
    folder of fp32 exports shared by the pairs of one build (exports.py); `convert` stands
    in for pipeline.convert (tests).
    """
    from edgeport.archive import pack
    from edgeport.pipeline import ConvertRequest
    from edgeport.pipeline import convert as pipeline_convert
    from edgeport.progress import SilentProgress
    from edgeport.verify import verify

    progress = progress or SilentProgress()
    run_convert = convert or pipeline_convert
    record = pair_record(model, profile)
    try:
        request = ConvertRequest(
            model=model.id,
            profile=profile,
            out=bundle_folder(build, model, profile),
            revision=model.revision,
            task=model.task,
            samples=build.samples,
            recipes=frozenset(model.recipes) if model.recipes else None,
            objective=build.objective,
            search_budget_s=build.search_budget_s,
            max_size_mb=build.max_size_mb,
            accept_degraded=build.accept_degraded,
            force=force,
            catalog=catalog,
            export_cache=export_cache,
        )
        result = run_convert(request, progress)
        record["commit"] = result.plan.model.commit
        record["recipe"] = result.chosen.recipe_id if result.chosen else None
        record["verdict"] = result.verdict
        if result.bundle is None:
            record["exit_code"] = 3
            record["error"] = f"accuracy gate failed; report: {result.report}"
            return record
        record["bundle"] = str(result.bundle)
        manifest = json.loads((result.bundle / "manifest.json").read_text(encoding="utf-8"))
        record["content_sha256"] = (manifest.get("reproducibility") or {}).get("content_sha256")
        if build.verify:
            checked = verify(result.bundle, runs=3)
            record["verify"] = "passed" if checked["passed"] else "failed"
            if not checked["passed"]:
                record["exit_code"] = int(checked["exit_code"])
                record["error"] = "verification failed: " + "; ".join(checked["failures"])
                return record
        if devices is not None:
            profile_id = str(manifest.get("profile", {}).get("id"))
            entry = devices.devices.get(profile_id)
            if entry is None:
                progress.info(f"no device for profile {profile_id} in the devices file")
            elif not _verify_on_device(result.bundle, entry, record, progress):
                return record
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
    return record


# --------------------------------------------------------------------------- run


@contextmanager
def _exports_folder(root: Path | None, *, remove_root: bool) -> Iterator[Path]:
    """A fresh folder for this build's fp32 exports, removed when the build ends: in
    `root` (which every Ray worker must see) or in the system's temporary folder."""
    if root is None:
        with tempfile.TemporaryDirectory(prefix="edgeport-build-") as tmp:
            yield Path(tmp) / "exports"
        return
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if remove_root:
            with suppress(OSError):  # another build's folder is still there
                root.rmdir()


class PairRunner(Protocol):
    """Runs a build's pairs somewhere other than one after another in this process
    (build_ray.RayCluster: as tasks on a Ray cluster), each through `build_pair`."""

    def check(self, build: BuildFile, devices: DeviceInventory | None) -> None:
        """BadInputError for what a local build allows and this runner cannot do."""

    def run(
        self,
        build: BuildFile,
        numbered: Sequence[tuple[int, ModelEntry, str]],
        total: int,
        *,
        catalog: Catalog,
        export_cache: Path,
        force: bool,
        convert: Callable[..., Any] | None,
        progress: Progress,
    ) -> list[dict[str, Any]]:
        """The records of the `numbered` pairs (number in the file, model, profile), in
        that order."""
        ...


def run_build(
    build: BuildFile,
    *,
    catalog: Catalog | None = None,
    progress: Progress | None = None,
    force: bool = False,
    convert: Callable[..., Any] | None = None,
    devices: DeviceInventory | None = None,
    shard: Shard | None = None,
    export_cache: Path | None = None,
    ray: PairRunner | None = None,
) -> tuple[list[dict[str, Any]], Path]:
    """Convert every pair (or a shard's); returns the index records and the index path.

    The whole file is checked first (check_build: BadInputError, nothing converted or
    written); after that a failed pair never stops the others. With `devices`, each bundle
    whose profile id has a device is also verified there (edgeport.device): the device run
    is kept in the bundle's device-runs/ and summarised in the record (`device_run`), and
    a bundle that fails on its device fails its pair (no archive).

    `shard` builds only its pairs and writes `index.shard-I-of-N.json` instead of
    index.json (merge_shards joins them). `ray` runs the pairs as tasks on a Ray cluster
    (edgeport.build_ray) instead of one after another here; the records and the index
    are the same. `export_cache` is where this build's fp32 exports are kept while it
    runs (default: a temporary folder; with `ray`, `out/.export-cache`).
    """
    from edgeport.catalog import is_file, load_catalog
    from edgeport.progress import SilentProgress

    progress = progress or SilentProgress()
    catalog = catalog or load_catalog()
    check_build(build, catalog)
    if export_cache is not None and is_file(export_cache):
        raise BadInputError(f"--export-cache: {export_cache} is a file, not a folder")
    if ray is not None:
        ray.check(build, devices)
    elif devices is not None and devices.devices:
        from edgeport.device import ssh_executable

        ssh_executable()  # before hours of conversions
    pairs = build.pairs()
    numbered = [
        (number, model, profile)
        for number, (model, profile) in enumerate(pairs, start=1)
        if shard is None or shard.holds(number)
    ]
    if shard is not None:
        listed = ", ".join(str(number) for number, _, _ in numbered) or "none"
        progress.stage(f"Shard {shard}: pairs {listed} of {len(pairs)}")
    out = build.out
    out.mkdir(parents=True, exist_ok=True)
    root, remove_root = export_cache, False
    if ray is not None and export_cache is None:
        root, remove_root = out / EXPORT_CACHE_FOLDER, True
    with _exports_folder(root, remove_root=remove_root) as cache:
        if ray is not None:
            records = ray.run(
                build,
                numbered,
                len(pairs),
                catalog=catalog,
                export_cache=cache,
                force=force,
                convert=convert,
                progress=progress,
            )
        else:
            records = []
            for number, model, profile in numbered:
                progress.stage(f"[pair {number}/{len(pairs)}] {model.id} on {profile}")
                record = build_pair(
                    build,
                    model,
                    profile,
                    catalog=catalog,
                    export_cache=cache,
                    force=force,
                    convert=convert,
                    devices=devices,
                    progress=progress,
                )
                records.append(record)
                progress.info(pair_line(record))
    index: dict[str, Any] = {"format_version": 1}
    if shard is not None:
        index |= {
            "shard": str(shard),
            "build_sha256": build_digest(build),
            "pairs_total": len(pairs),
            "pair_numbers": [number for number, _, _ in numbered],
        }
    path = out / (shard.index_name if shard is not None else INDEX_FILE)
    _write_index(path, {**index, "pairs": records})
    return records, path


def _write_index(path: Path, index: dict[str, Any]) -> None:
    path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def merge_shards(build: BuildFile) -> tuple[list[dict[str, Any]], Path]:
    """Join the shard indexes in `build.out` (index.shard-I-of-N.json, one per shard of one
    split) into index.json: the pairs in file order, as a build of all of them writes it.

    BadInputError when a shard is missing, indexes of two splits or of another build file
    (other models, profiles or settings) are there, or a pair is not covered exactly once.
    """
    from edgeport.catalog import echo

    out = build.out
    found: dict[int, dict[int, Path]] = {}
    for path in sorted(out.glob("index.shard-*-of-*.json")) if out.is_dir() else []:
        match = _SHARD_INDEX.fullmatch(path.name)
        if match:
            found.setdefault(int(match[2]), {})[int(match[1])] = path
    if not found:
        raise BadInputError(f"--merge: no shard indexes (index.shard-I-of-N.json) in {out}")
    if len(found) > 1:
        splits = ", ".join(f"{count} shards" for count in sorted(found))
        raise BadInputError(
            f"--merge: {out} holds indexes of several splits ({splits}); "
            "remove the stale ones (index.shard-I-of-N.json)"
        )
    count, files = next(iter(found.items()))
    missing = [str(Shard(i, count)) for i in range(1, count + 1) if i not in files]
    if missing:
        raise BadInputError(
            f"--merge: {len(missing)} of {count} shards missing in {out}: {', '.join(missing[:5])}"
        )
    pairs = build.pairs()
    digest = build_digest(build)
    records: dict[int, dict[str, Any]] = {}
    for index in range(1, count + 1):
        path = files[index]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            numbers, shard_records = data["pair_numbers"], data["pairs"]
            if data.get("shard") != str(Shard(index, count)) or len(numbers) != len(shard_records):
                raise ValueError("not the index of the shard its name says")
            if data.get("build_sha256") != digest or data.get("pairs_total") != len(pairs):
                raise BadInputError(
                    f"--merge: {path} is from another build (other models, profiles or "
                    "settings than this file's); run every shard with the same file"
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadInputError(f"--merge: {path}: not a shard index ({echo(exc)})") from exc
        for number, record in zip(numbers, shard_records, strict=True):
            if not isinstance(number, int) or not 1 <= number <= len(pairs):
                raise BadInputError(f"--merge: {path}: no pair number {echo(number)}")
            if number in records:
                raise BadInputError(f"--merge: pair {number} is in two shard indexes")
            if not Shard(index, count).holds(number):
                raise BadInputError(f"--merge: {path}: pair {number} is not shard {index}'s")
            records[number] = record
    uncovered = [str(n) for n in range(1, len(pairs) + 1) if n not in records]
    if uncovered:
        raise BadInputError(f"--merge: pairs {', '.join(uncovered[:10])} are in no shard index")
    merged = [records[number] for number in range(1, len(pairs) + 1)]
    path = out / INDEX_FILE
    _write_index(path, {"format_version": 1, "pairs": merged})
    return merged, path


def build_exit_code(records: list[dict[str, Any]]) -> int:
    """0 when every pair shipped a bundle; otherwise the first failed pair's exit code."""
    return next((int(r["exit_code"] or 1) for r in records if r["exit_code"] != 0), 0)
