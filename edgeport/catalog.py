"""Load and validate the YAML catalogues: profiles, recipes and targets.

Every error names the file and the field, so a contributor's pull request fails with a
message they can act on. Cross-references (a profile naming an unknown target, a recipe
for a target that does not exist) are checked here too, once, for the whole catalogue.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgeport.errors import BadInputError, CatalogError
from edgeport.schemas import DeviceProfile, Recipe, Target

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

HOST_PROFILE_ID = "host"
ENV_PROFILES_DIR = "EDGEPORT_PROFILES_DIR"
ENV_RECIPES_DIR = "EDGEPORT_RECIPES_DIR"

ModelT = TypeVar("ModelT", bound=BaseModel)


def builtin_dir(kind: str) -> Path:
    """The catalogue folder shipped with edgeport: inside the wheel, or the source tree."""
    package = Path(__file__).resolve().parent
    installed = package / "_catalog" / kind
    if installed.is_dir():
        return installed
    return package.parent / kind


def format_validation_error(path: Path, error: ValidationError) -> list[str]:
    """One line per problem: `file: field: reason`."""
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "literal_error":
            message = f"{message}, got {item.get('input')!r}"
        lines.append(f"{path}: {location}: {message}")
    return lines


def read_yaml_mapping(path: Path) -> dict[str, object]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BadInputError(f"{path}: file not found") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise CatalogError(f"{path}: malformed YAML{where}: {problem}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def problems_in_file(path: Path, model: type[ModelT]) -> tuple[ModelT | None, list[str]]:
    """Parse and validate one file; return the object or every problem found.

    The id of a catalogue entry is its file name. A profile may leave `id:` out (it is
    then taken from the file name, so `edgeport profiles detect > my-board.yaml` gives
    the profile `my-board`); where an id is written it must match the file name.
    """
    try:
        data = read_yaml_mapping(path)
    except BadInputError as exc:
        return None, [str(exc)]
    expected_id = path.stem
    id_from_name = model is DeviceProfile and "id" not in data
    if id_from_name:
        data = {"id": expected_id, **data}
    problems: list[str] = []
    written_id = data.get("id")
    if isinstance(written_id, str) and written_id != expected_id:
        problems.append(f"{path}: id: {written_id!r} must match the file name {expected_id!r}")
    try:
        obj = model.model_validate(data)
    except ValidationError as exc:
        for line in format_validation_error(path, exc):
            if id_from_name and line.startswith(f"{path}: id: "):
                line += " (the id is the file name: rename the file)"
            problems.append(line)
        return None, problems
    if problems:
        return None, problems
    return obj, []


def load_file(path: Path, model: type[ModelT]) -> ModelT:
    obj, problems = problems_in_file(path, model)
    if obj is None:
        more = f" (and {len(problems) - 1} more)" if problems[1:] else ""
        raise CatalogError(problems[0] + more)
    return obj


@dataclass
class Catalog:
    profiles: dict[str, DeviceProfile] = field(default_factory=dict)
    recipes: dict[str, Recipe] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)

    def profile(self, name: str) -> DeviceProfile:
        """A profile by id, `host` (probed now), or a path to a YAML file."""
        if name == HOST_PROFILE_ID and HOST_PROFILE_ID not in self.profiles:
            from edgeport.host import probe_host_profile

            return probe_host_profile(self.targets)
        if name in self.profiles:
            return self.profiles[name]
        path = Path(name)
        if path.suffix in {".yaml", ".yml"} or path.exists():
            if not path.is_file():
                raise BadInputError(f"profile file not found: {path}")
            profile = load_file(path, DeviceProfile)
            problems = cross_reference_problems([(path, profile)], self.targets)
            if problems:
                raise CatalogError(problems[0])
            return profile
        known = ", ".join(sorted([*self.profiles, HOST_PROFILE_ID]))
        raise BadInputError(f"unknown profile {name!r}; known profiles: {known}")

    def recipe(self, name: str) -> Recipe:
        if name not in self.recipes:
            raise BadInputError(
                f"unknown recipe {name!r}; known recipes: {', '.join(sorted(self.recipes))}"
            )
        return self.recipes[name]

    def target(self, name: str) -> Target:
        if name not in self.targets:
            raise BadInputError(f"unknown target {name!r}")
        return self.targets[name]


def cross_reference_problems(
    profiles: Iterable[tuple[Path, DeviceProfile]], targets: dict[str, Target]
) -> list[str]:
    problems = []
    for path, profile in profiles:
        for index, runtime in enumerate(profile.runtimes):
            if runtime.target not in targets:
                problems.append(
                    f"{path}: runtimes.{index}.target: unknown runtime {runtime.target!r} "
                    f"(known: {', '.join(sorted(targets))})"
                )
                continue
            target = targets[runtime.target]
            for device in runtime.devices:
                if device not in target.devices:
                    problems.append(
                        f"{path}: runtimes.{index}.devices: {device!r} is not a device of "
                        f"{target.id} (known: {', '.join(target.devices)})"
                    )
    return problems


def _yaml_files(folders: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise BadInputError(f"catalogue folder not found: {folder}")
        files.extend(sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]))
    return files


def _load_kind(files: list[Path], model: type[ModelT]) -> dict[str, tuple[Path, ModelT]]:
    # Later files override earlier ones with the same id: a user's folder can replace
    # a built-in profile. Within one folder ids are unique because id == file stem.
    loaded: dict[str, tuple[Path, ModelT]] = {}
    for path in files:
        obj = load_file(path, model)
        loaded[getattr(obj, "id")] = (path, obj)  # noqa: B009 - every catalogue model has an id
    return loaded


def load_targets(targets_dirs: Sequence[Path] = ()) -> dict[str, Target]:
    """The built-in targets, then those from extra folders; raises CatalogError if malformed."""
    files = _yaml_files([builtin_dir("targets"), *targets_dirs])
    return {key: obj for key, (_, obj) in _load_kind(files, Target).items()}


def _env_dirs(variable: str) -> list[Path]:
    value = os.environ.get(variable, "")
    return [Path(part) for part in value.split(os.pathsep) if part]


def load_catalog(
    profiles_dirs: Sequence[Path] = (),
    recipes_dirs: Sequence[Path] = (),
    targets_dirs: Sequence[Path] = (),
) -> Catalog:
    """Built-in catalogues, then folders from the environment, then from the command line.

    Later folders override earlier entries with the same id.
    """
    profile_files = _yaml_files(
        [builtin_dir("profiles"), *_env_dirs(ENV_PROFILES_DIR), *profiles_dirs]
    )
    recipe_files = _yaml_files([builtin_dir("recipes"), *_env_dirs(ENV_RECIPES_DIR), *recipes_dirs])
    target_files = _yaml_files([builtin_dir("targets"), *targets_dirs])

    targets = _load_kind(target_files, Target)
    recipes = _load_kind(recipe_files, Recipe)
    profiles = _load_kind(profile_files, DeviceProfile)

    target_map = {key: obj for key, (_, obj) in targets.items()}
    problems = cross_reference_problems(profiles.values(), target_map)
    for path, recipe in recipes.values():
        if recipe.target not in target_map:
            problems.append(f"{path}: target: unknown target {recipe.target!r}")
    if problems:
        raise CatalogError(problems[0])

    catalog = Catalog(
        profiles={key: obj for key, (_, obj) in profiles.items()},
        recipes={key: obj for key, (_, obj) in recipes.items()},
        targets=target_map,
    )
    for mapping in (profiles, recipes, targets):
        for key, (path, _) in mapping.items():
            catalog.sources[f"{path.parent.name}/{key}"] = path
    return catalog
