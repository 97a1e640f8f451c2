"""Load and validate the YAML catalogues: profiles, recipes and targets.

Every error names the file and the field, so a contributor's pull request fails with a
message they can act on. Cross-references (a profile naming an unknown target, a recipe
for a target that does not exist) are checked here too, once, for the whole catalogue.
"""

from __future__ import annotations

import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgeport.errors import BadInputError, CatalogError
from edgeport.schemas import (
    Calibration,
    DeviceProfile,
    GraphOptimization,
    Recipe,
    Target,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

HOST_PROFILE_ID = "host"
ENV_PROFILES_DIR = "EDGEPORT_PROFILES_DIR"
ENV_RECIPES_DIR = "EDGEPORT_RECIPES_DIR"
ENV_CALIBRATIONS_DIR = "EDGEPORT_CALIBRATIONS_DIR"

ModelT = TypeVar("ModelT", bound=BaseModel)


def builtin_dir(kind: str) -> Path:
    """The catalogue folder shipped with edgeport: inside the wheel, or the source tree."""
    package = Path(__file__).resolve().parent
    installed = package / "_catalog" / kind
    if installed.is_dir():
        return installed
    return package.parent / kind


# --------------------------------------------------------------------------- safe reading

# Every YAML file edgeport reads (catalogues, user profiles, build files) goes through
# read_yaml_file: a hostile or mistaken file gives one line and exit 2, never a hang, an
# exhausted memory or a message the size of the file.
MAX_YAML_BYTES = 1024 * 1024
# Values reachable through aliases, counted as if expanded: a "billion laughs" file stops
# here instead of expanding into 10^9 values in validation or an error message.
MAX_YAML_ALIAS_NODES = 1000
MAX_YAML_DEPTH = 64
# User values echoed in a message are cut to this many characters.
ECHO_LIMIT = 80

_REPR = reprlib.Repr()
_REPR.maxstring = ECHO_LIMIT
_REPR.maxother = ECHO_LIMIT
_REPR.maxlevel = 3
for _name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
    setattr(_REPR, _name, 4)


def shorten(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` on one line (line breaks become spaces), cut to `limit` characters with "…"."""
    head = " ".join(text[: limit + 1].splitlines())
    if len(text) <= limit and len(head) <= limit:
        return head
    return head[: limit - 1] + "…"


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """A user's value for an error message: its repr, bounded in time and length."""
    return shorten(_REPR.repr(value), limit)


def _byte_size(count: int) -> str:
    return f"{count // (1024 * 1024)} MiB" if count >= 1024 * 1024 else f"{count:,} bytes"


def read_text_file(
    path: Path, *, max_bytes: int, error: type[BadInputError] = BadInputError
) -> str:
    """A UTF-8 text file of at most `max_bytes`; anything else is a one-line `error`."""
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise BadInputError(f"{shorten(str(path), 240)}: file not found") from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise BadInputError(f"{shorten(str(path), 240)}: cannot read: {reason}") from exc
    if len(data) > max_bytes:
        raise error(f"{path}: larger than {_byte_size(max_bytes)}; is this the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{path}: not UTF-8 text (byte {exc.start}, line {line}); is this the right file?"
        ) from exc


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that bounds what aliases can expand to and how deep values nest."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._alias_nodes = 0
        self._sizes: dict[int, int] = {}
        self._open_anchors: list[str] = []
        self._depth = 0

    @staticmethod
    def _refuse(problem: str, mark: Any) -> NoReturn:
        raise yaml.composer.ComposerError(None, None, problem, mark)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                self._refuse("an alias refers to the value that contains it", event.start_mark)
            node = super().compose_node(parent, index)
            self._alias_nodes += self._size(node)
            if self._alias_nodes > MAX_YAML_ALIAS_NODES:
                self._refuse(
                    f"aliases expand to more than {MAX_YAML_ALIAS_NODES} values", event.start_mark
                )
            return node
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            self._refuse(f"values nested more than {MAX_YAML_DEPTH} deep", event.start_mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open_anchors.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.pop()

    def _size(self, node: yaml.Node | None) -> int:
        """Values in `node`, aliases counted as expanded (memoised: nodes are shared)."""
        if node is None:
            return 0
        known = self._sizes.get(id(node))
        if known is not None:
            return known
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._size(key) + self._size(value) for key, value in node.value)
        size = min(size, MAX_YAML_ALIAS_NODES + 1)  # enough to know it is too many
        self._sizes[id(node)] = size
        return size


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`(line N, column M): problem` from a PyYAML error, on one line."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f" (position {exc.position}): unacceptable character #x{exc.character:04x}"
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = str(getattr(exc, "problem", None) or "invalid YAML")
    context = getattr(exc, "context", None)
    if context and problem.startswith("but "):  # "expected a single document, but found..."
        problem = f"{context}, {problem}"
    return f"{where}: {shorten(problem, 120)}"


def parse_yaml(text: str, source: Path, *, error: type[BadInputError] = CatalogError) -> object:
    """One YAML document with edgeport's bounds (aliases, nesting); errors are one line."""
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise error(f"{source}: malformed YAML{_yaml_problem(exc)}") from exc
    except RecursionError as exc:
        raise error(f"{source}: malformed YAML: values nested too deeply") from exc
    except (ValueError, OverflowError) as exc:  # a 5000-digit integer, a 13th month...
        raise error(f"{source}: malformed YAML: {shorten(str(exc), 120)}") from exc
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(
    path: Path, *, max_bytes: int = MAX_YAML_BYTES, error: type[BadInputError] = CatalogError
) -> object:
    """THE way edgeport reads a YAML file: at most `max_bytes` of UTF-8, one document,
    aliases and nesting bounded. Every failure is one line naming the file: `error` for
    the file's content (CatalogError by default), BadInputError when it cannot be read.
    """
    return parse_yaml(read_text_file(path, max_bytes=max_bytes, error=error), path, error=error)


def format_validation_error(path: Path, error: ValidationError) -> list[str]:
    """One line per problem: `file: field: reason`, user values cut to ECHO_LIMIT."""
    lines = []
    for item in error.errors():
        parts = list(item["loc"])
        bad_key = parts[-1:] == ["[key]"]  # a mapping's key, not its value, is wrong
        if bad_key:
            parts.pop()
        location = ".".join(shorten(str(part), 40) for part in parts) or "(top level)"
        message = shorten(str(item["msg"]), 200)
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] in {"literal_error", "string_pattern_mismatch"}:
            # A pattern alone does not show the contributor which of their values broke it.
            message = f"{message}, got {echo(item.get('input'))}"
        if bad_key:
            message = f"unknown key: {message}"
        lines.append(f"{path}: {location}: {message}")
    return lines


def read_yaml_mapping(path: Path) -> dict[str, object]:
    data = read_yaml_file(path)
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
        problems.append(
            f"{path}: id: {echo(written_id)} must match the file name {echo(expected_id)}"
        )
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


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long to exist, or a NUL byte
        return False


def is_folder(path: Path) -> bool:
    """Path.is_dir, False (not an OSError) for a name too long or otherwise impossible."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def is_file(path: Path) -> bool:
    """Path.is_file, False (not an OSError) for a name too long or otherwise impossible."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


@dataclass
class Catalog:
    profiles: dict[str, DeviceProfile] = field(default_factory=dict)
    recipes: dict[str, Recipe] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    # Folders searched for calibrations/<profile-id>.yaml, later ones first: read when a
    # plan asks for its profile's, not at load time.
    calibrations_dirs: list[Path] = field(default_factory=list)

    def calibration_file(self, profile_id: str) -> Path | None:
        """The calibration file for `profile_id` that wins (the last folder's), or None."""
        for folder in reversed(self.calibrations_dirs):
            for suffix in (".yaml", ".yml"):
                path = folder / f"{profile_id}{suffix}"
                if is_file(path):
                    return path
        return None

    def calibration(self, profile_id: str) -> Calibration | None:
        """The measured speedups for a profile, validated, or None when it has none."""
        path = self.calibration_file(profile_id)
        return None if path is None else load_calibration(path, self.baseline)

    @property
    def baseline(self) -> Recipe:
        """The recipe every speed is measured against (`baseline: true`): its target's plain
        fp32 export. load_catalog checks there is exactly one; asked, not assumed."""
        return find_baseline(self.recipes.values())

    def profile(self, name: str) -> DeviceProfile:
        """A profile by id, `host` (probed now), or a path to a YAML file."""
        if name == HOST_PROFILE_ID and HOST_PROFILE_ID not in self.profiles:
            from edgeport.host import probe_host_profile

            return probe_host_profile(self.targets)
        if name in self.profiles:
            return self.profiles[name]
        path = Path(name)
        if path.suffix in {".yaml", ".yml"} or _exists(path):
            if not is_file(path):
                raise BadInputError(f"profile file not found: {shorten(name, 240)}")
            profile = load_file(path, DeviceProfile)
            problems = cross_reference_problems([(path, profile)], self.targets)
            if problems:
                raise CatalogError(problems[0])
            return profile
        known = ", ".join(sorted([*self.profiles, HOST_PROFILE_ID]))
        raise BadInputError(f"unknown profile {echo(name)}; known profiles: {known}")

    def recipe(self, name: str) -> Recipe:
        if name not in self.recipes:
            raise BadInputError(
                f"unknown recipe {echo(name)}; known recipes: {', '.join(sorted(self.recipes))}"
            )
        return self.recipes[name]

    def target(self, name: str) -> Target:
        if name not in self.targets:
            raise BadInputError(f"unknown target {echo(name)}")
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
                        f"{path}: runtimes.{index}.devices: {echo(device)} is not a device of "
                        f"{target.id} (known: {', '.join(target.devices)})"
                    )
    return problems


def find_baseline(recipes: Iterable[Recipe], sources: Mapping[str, Path] | None = None) -> Recipe:
    """The one recipe marked `baseline: true`; a one-line CatalogError when there is none,
    more than one, or it is not a plain fp32 export. `sources` (recipe id -> file) names
    the files in the message."""
    sources = sources or {}

    def where(recipe: Recipe) -> str:
        return str(sources.get(recipe.id, f"recipe {recipe.id}"))

    marked = sorted((r for r in recipes if r.baseline), key=lambda r: r.id)
    if len(marked) != 1:
        found = ", ".join(where(r) for r in marked) or "none"
        raise CatalogError(
            "recipes: exactly one recipe must set `baseline: true` (what every speedup is "
            f"relative to); found {found}"
        )
    baseline = marked[0]
    if baseline.quantize.scheme != "none" or baseline.graph != GraphOptimization():
        raise CatalogError(
            f"{where(baseline)}: baseline: the baseline must be a plain fp32 export "
            "(quantize.scheme none, no graph options)"
        )
    return baseline


def calibration_problems(path: Path, baseline: Recipe) -> tuple[Calibration | None, list[str]]:
    """Parse and validate one calibration file: the schema, the profile named as the file
    is, and tables that agree with each other, relative to the catalogue's `baseline`
    recipe; every problem as `file: field: reason`."""
    calibration, problems = problems_in_file(path, Calibration)
    if calibration is None:
        return None, problems
    if calibration.profile != path.stem:
        problems.append(
            f"{path}: profile: {echo(calibration.profile)} must match the file name "
            f"{echo(path.stem)}"
        )
    problems += [f"{path}: {problem}" for problem in calibration.problems(baseline)]
    return (None, problems) if problems else (calibration, [])


def load_calibration(path: Path, baseline: Recipe) -> Calibration:
    calibration, problems = calibration_problems(path, baseline)
    if calibration is None:
        more = f" (and {len(problems) - 1} more)" if problems[1:] else ""
        raise CatalogError(problems[0] + more)
    return calibration


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
    calibrations_dirs: Sequence[Path] = (),
) -> Catalog:
    """Built-in catalogues, then folders from the environment, then from the command line.

    Later folders override earlier entries with the same id.
    """
    calibration_folders = [*_env_dirs(ENV_CALIBRATIONS_DIR), *calibrations_dirs]
    for folder in calibration_folders:
        if not is_folder(folder):
            raise BadInputError(f"calibrations folder not found: {shorten(str(folder), 240)}")
    builtin_calibrations = builtin_dir("calibrations")
    if is_folder(builtin_calibrations):
        calibration_folders.insert(0, builtin_calibrations)
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
    find_baseline(
        (recipe for _, recipe in recipes.values()),
        {key: path for key, (path, _) in recipes.items()},
    )

    catalog = Catalog(
        profiles={key: obj for key, (_, obj) in profiles.items()},
        recipes={key: obj for key, (_, obj) in recipes.items()},
        targets=target_map,
        calibrations_dirs=calibration_folders,
    )
    for mapping in (profiles, recipes, targets):
        for key, (path, _) in mapping.items():
            catalog.sources[f"{path.parent.name}/{key}"] = path
    return catalog
