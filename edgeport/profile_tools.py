"""Device profile tooling behind `edgeport profiles validate | schema | detect`.

`validate` is what a profile pull request's CI runs: it reports every problem in every
file, one line each (`file: field: reason`), so a contributor can fix them all at once.
The JSON Schema is generated from the pydantic model, the single source of truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

import yaml

from edgeport import __version__
from edgeport.catalog import builtin_dir, cross_reference_problems, problems_in_file
from edgeport.hub import is_folder
from edgeport.schemas import CpuFeature, DeviceProfile

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

    from edgeport.schemas import Target

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_FILE_NAME = "device-profile.schema.json"

_ALL_FEATURES: tuple[str, ...] = get_args(CpuFeature)
X86_FEATURES: frozenset[str] = frozenset(_ALL_FEATURES[: _ALL_FEATURES.index("neon")])
ARM_FEATURES: frozenset[str] = frozenset(_ALL_FEATURES) - X86_FEATURES


# --------------------------------------------------------------------------- schema


def profile_json_schema() -> dict[str, Any]:
    """JSON Schema of a profile file, from the DeviceProfile model.

    One adjustment reflects how files are read (catalog.problems_in_file): `id` may be
    left out, since it defaults to the file name.
    """
    schema = DeviceProfile.model_json_schema()
    schema["required"] = [name for name in schema.get("required", []) if name != "id"]
    schema["properties"]["id"]["description"] = (
        "Profile id. Defaults to the file name (without .yaml); when written, it must match it."
    )
    schema["description"] = (
        "An edgeport device profile: one device per YAML file, file name = profile id. "
        "Generated from edgeport.schemas.DeviceProfile by `edgeport profiles schema`."
    )
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def render_json_schema() -> str:
    """The schema as the exact text stored in schemas/device-profile.schema.json."""
    return json.dumps(profile_json_schema(), indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- validate


@dataclass
class ValidationOutcome:
    files: list[Path] = field(default_factory=list)
    profiles: list[DeviceProfile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            ids = ", ".join(p.id for p in self.profiles)
            noun = "profile" if len(self.profiles) == 1 else "profiles"
            return f"OK: {len(self.profiles)} {noun} valid ({ids})"
        noun = "problem" if len(self.problems) == 1 else "problems"
        return f"{len(self.problems)} {noun} in {len(self.files)} file(s)"


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; folders stand for the *.yaml / *.yml files directly inside them."""
    files: list[Path] = []
    for path in paths:
        if is_folder(path):
            files.extend(sorted([*path.glob("*.yaml"), *path.glob("*.yml")]))
        else:
            files.append(path)
    unique: dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def isa_problems(path: Path, profile: DeviceProfile) -> list[str]:
    """CPU features that do not exist on the profile's architecture (avx2 on arm64...)."""
    foreign = X86_FEATURES if profile.cpu.arch in {"arm64", "armv7"} else ARM_FEATURES
    problems = []
    for index, feature in enumerate(profile.cpu.features):
        if feature in foreign:
            problems.append(
                f"{path}: cpu.features.{index}: {feature!r} is not a feature of "
                f"{profile.cpu.arch} CPUs"
            )
    return problems


def duplicate_id_problems(
    loaded: Sequence[tuple[Path, DeviceProfile]], catalogue: Mapping[str, Path]
) -> list[str]:
    """Two different files with one id: among the given files, or vs the catalogue."""
    problems = []
    first: dict[str, Path] = {}
    for path, profile in loaded:
        other = first.setdefault(profile.id, path)
        if other is not path:
            problems.append(f"{path}: id: {profile.id!r} is also the id of {other}")
            continue
        builtin = catalogue.get(profile.id)
        if builtin is not None and builtin.resolve() != path.resolve():
            problems.append(
                f"{path}: id: {profile.id!r} is already the built-in profile {builtin}; "
                "choose another file name, or edit that file"
            )
    return problems


def builtin_profile_files() -> dict[str, Path]:
    """id -> file of the built-in catalogue (ids are file names there)."""
    folder = builtin_dir("profiles")
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]) if folder.is_dir() else []
    return {path.stem: path for path in files}


def validate_profile_files(
    paths: Iterable[Path],
    targets: Mapping[str, Target],
    catalogue: Mapping[str, Path] | None = None,
) -> ValidationOutcome:
    """Every problem in the given profile files (folders expand to their YAML files).

    Checks: YAML syntax, schema (unknown keys, types, ranges), id = file name, runtimes
    and devices known to the targets, CPU features of the right architecture, and ids
    unique across the files and against `catalogue` (default: the built-in profiles).
    """
    outcome = ValidationOutcome(files=expand_paths(paths))
    if not outcome.files:
        outcome.problems.append("no profile files given (folders are searched for *.yaml)")
        return outcome
    loaded: list[tuple[Path, DeviceProfile]] = []
    for path in outcome.files:
        profile, problems = problems_in_file(path, DeviceProfile)
        outcome.problems.extend(problems)
        if profile is None:
            continue
        more = cross_reference_problems([(path, profile)], dict(targets))
        more += isa_problems(path, profile)
        outcome.problems.extend(more)
        if not more:
            loaded.append((path, profile))
    outcome.problems.extend(
        duplicate_id_problems(loaded, builtin_profile_files() if catalogue is None else catalogue)
    )
    if outcome.ok:
        outcome.profiles = [profile for _, profile in loaded]
    return outcome


# --------------------------------------------------------------------------- detect


def detected_profile_yaml(profile: DeviceProfile, write_id: bool = False) -> str:
    """A probed profile as YAML a user can save, edit and contribute, with a header.

    Without `write_id` the id line is left out: the profile takes the name of the file
    it is saved to, so `edgeport profiles detect > my-board.yaml` is the `my-board` profile.
    """
    data = profile.model_dump(mode="json", exclude_none=True)
    if not write_id:
        data.pop("id")
    save_as = f"{profile.id}.yaml" if write_id else "my-board.yaml"
    header = [
        f"# Device profile probed by `edgeport profiles detect` (edgeport {__version__}).",
        f"# Save it as {save_as}: the file name is the profile id"
        + (" and must match `id:`." if write_id else " (add `id:` only if it matches)."),
        "# Before sharing it, check it against the vendor's specification and cite that in",
        "# `source:`. memory_mb is what the OS reports (a little under the installed RAM);",
        "# cores are the cores edgeport may use here; runtimes list what is installed now, CPU",
        "# first: move an accelerator up to prefer it, and add `accelerator:` for a GPU or NPU.",
        f"# Then: edgeport profiles validate {save_as}",
        f"#       edgeport plan MODEL --profile {save_as}",
    ]
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)
    return "\n".join(header) + "\n" + body
