"""Write the deployable bundle: into a temporary folder first, renamed into place at the end.

A bundle is complete or absent: a failure at any point removes the temporary folder (and
any parent folder created for it), and an existing bundle is only replaced when the new one
is fully written. `--force` replaces an edgeport bundle (or an empty folder), never any
other folder, never one holding the current folder or the model being converted.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from edgeport.errors import BadInputError, SecurityError
from edgeport.runners.ondevice import sha256_file
from edgeport.schemas import FileEntry, Manifest

MANIFEST = "manifest.json"
REPORT = "report.md"
# Accuracy against latency of every candidate, drawn beside the report.
TRADEOFF_IMAGE = "tradeoff.svg"
RUNNER = "run.py"
VERIFIER = "verify.py"
VERIFIER_TEMPLATE = "verify_bundle.py"
# The numpy-only code run.py and verify.py share, shipped in every bundle under this name.
DEVICE_MODULE = "ondevice.py"
REQUIREMENTS = "requirements.txt"
CREATED_BY = "edgeport"
FOLDER_MODE = 0o755
# A real manifest is a few hundred KB; a larger file in a folder is not read to decide
# whether --force may replace that folder.
_MAX_MANIFEST_PROBE_BYTES = 32 * 1024 * 1024
_SHOWN_LIMIT = 100


def shown(value: object, limit: int = _SHOWN_LIMIT) -> str:
    """A user-supplied value for a one-line message: no control characters, bounded length."""
    text = "".join(char if char.isprintable() else "?" for char in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def process_umask() -> int:
    """The process umask, read once (setting it is the only way to read it, and not atomic)."""
    current = os.umask(0)
    os.umask(current)
    return current


def folder_mode() -> int:
    return FOLDER_MODE & ~process_umask()


def file_mode(*, executable: bool) -> int:
    return (0o755 if executable else 0o644) & ~process_umask()


def is_edgeport_bundle(folder: Path) -> bool:
    """A real folder whose manifest.json is a JSON object with "created_by": "edgeport"."""
    manifest = folder / MANIFEST
    try:
        if folder.is_symlink() or not folder.is_dir() or manifest.is_symlink():
            return False
        if not manifest.is_file() or manifest.stat().st_size > _MAX_MANIFEST_PROBE_BYTES:
            return False
        data = json.loads(manifest.read_bytes())
    except (OSError, ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError
        return False
    return isinstance(data, dict) and data.get("created_by") == CREATED_BY


def is_empty_folder(folder: Path) -> bool:
    try:
        if folder.is_symlink() or not folder.is_dir():
            return False
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a deleted current folder, a link loop
        return None


def _refuse_protected(out: Path, target: Path, protected: Sequence[Path]) -> None:
    """Refuse when `target` is, or holds, the current folder or a protected path."""
    try:
        current: Path | None = Path.cwd().resolve()
    except OSError:
        current = None
    guarded: list[tuple[str, Path | None]] = [("the current folder", current)]
    guarded += [(shown(path), _resolved(path)) for path in protected]
    for what, path in guarded:
        if path is None:
            continue
        if target == path:
            raise BadInputError(f"{shown(out)} is {what}; refusing to write a bundle there")
        if target in path.parents:
            raise BadInputError(
                f"{shown(out)} contains {what}, which must not be removed; refusing to replace it"
            )


def nearest_existing(folder: Path) -> Path:
    """`folder` or its first ancestor that exists (files and links count); absolute paths."""
    while not (folder.exists() or folder.is_symlink()) and folder != folder.parent:
        folder = folder.parent
    return folder


def check_destination(out: Path, *, force: bool, protected: Sequence[Path] = ()) -> None:
    """Fail before any work when `out` cannot or must not be written; creates nothing.

    Refused: an existing `out` without `force`; with `force`, anything but an edgeport
    bundle folder or an empty folder; `out` being or containing the current folder or one
    of `protected` (a bundle may be written inside a protected folder, not over it); a
    file where a parent folder should be; a parent that is not writable.
    """
    target = _resolved(out)
    if target is None:
        raise BadInputError(f"{shown(out)}: cannot resolve the path")
    _refuse_protected(out, target, protected)
    ancestor = nearest_existing(target.parent)
    if not ancestor.is_dir():
        raise BadInputError(f"{shown(out)}: {shown(ancestor)} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise BadInputError(f"{shown(out)}: cannot write in {shown(ancestor)} (permission denied)")
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise BadInputError(f"{shown(out)} already exists; pass --force to replace it")
    if out.is_symlink():
        raise BadInputError(f"{shown(out)} is a link; refusing to replace it")
    if not out.is_dir():
        raise BadInputError(f"{shown(out)} exists and is not a folder; refusing to replace it")
    if not (is_edgeport_bundle(out) or is_empty_folder(out)):
        raise BadInputError(
            f"{shown(out)} is not an edgeport bundle (no manifest.json written by edgeport); "
            "--force only replaces bundles"
        )


def make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns those created, outermost first."""
    missing = []
    while not (folder.exists() or folder.is_symlink()) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created = []
    try:
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            created.append(path)
    except BaseException:
        remove_created(created)
        raise
    return created


def remove_created(created: Sequence[Path]) -> None:
    """Undo `make_parents`: remove the folders it created, innermost first, if still empty."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            return


def set_folder_modes(root: Path) -> None:
    """mkdtemp makes 0700 folders; a bundle is read by others (0755 less the umask)."""
    mode = folder_mode()
    root.chmod(mode)
    for path in root.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(mode)


def install_folder(staging: Path, target: Path) -> None:
    """Rename the complete `staging` folder to `target` (same parent).

    An existing `target` (already checked by `check_destination`) is moved aside to a
    fresh name first and removed only once the new folder is in place; if the rename
    fails, it is put back.
    """
    if not (target.exists() or target.is_symlink()):
        staging.rename(target)
        return
    previous = Path(tempfile.mkdtemp(prefix=f".{target.name}.previous-", dir=target.parent))
    try:
        target.replace(previous)  # onto the empty folder just made: atomic on POSIX
    except BaseException:
        previous.rmdir()
        raise
    try:
        staging.rename(target)
    except BaseException:
        previous.replace(target)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def safe_destination(root: Path, relative: str) -> Path:
    """`root / relative`, refusing names that would escape root (from a model repository)."""
    candidate = (root / relative).resolve()
    if root.resolve() not in candidate.parents:
        raise SecurityError(f"refusing file name that escapes the bundle: {relative!r}")
    return candidate


def runner_source(template: str) -> str:
    return resources.files("edgeport.runners").joinpath(template).read_text(encoding="utf-8")


class BundleWriter:
    """Collects files in a temporary folder beside `out`; `commit` renames it into place.

    The parent folders of `out` are created here, when there is something to write, and
    removed again if the bundle is never committed. `commit` repeats `check_destination`
    (with the same `protected` paths), so `force` replaces only an edgeport bundle.
    """

    def __init__(self, out: Path, *, force: bool, protected: Sequence[Path] = ()) -> None:
        self.out = out
        self.force = force
        self.protected = tuple(protected)
        self._target = out.resolve()
        self._created = make_parents(self._target.parent)
        try:
            self.root = Path(
                tempfile.mkdtemp(prefix=f".{self._target.name}.partial-", dir=self._target.parent)
            )
        except BaseException:
            remove_created(self._created)
            raise
        self._committed = False

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        if not self._committed:
            remove_created(self._created)

    def copy(self, source: Path, relative: str | None = None) -> None:
        destination = safe_destination(self.root, relative or source.name)
        destination.parent.mkdir(parents=True, exist_ok=True)
        # Contents only: a read-only source (a shared model folder, a Hub cache) must not
        # make the bundle's copy read-only, nor carry the source's timestamps.
        shutil.copyfile(source, destination)
        destination.chmod(file_mode(executable=False))

    def write_text(self, relative: str, text: str) -> None:
        destination = safe_destination(self.root, relative)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text, encoding="utf-8")

    def file_entries(self, exclude: Iterable[str] = (MANIFEST,)) -> list[FileEntry]:
        skipped = set(exclude)
        entries = []
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root).as_posix()
            if path.is_file() and relative not in skipped:
                entries.append(
                    FileEntry(path=relative, sha256=sha256_file(path), bytes=path.stat().st_size)
                )
        return entries

    def write_manifest(self, manifest: Manifest) -> None:
        text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=False)
        self.write_text(MANIFEST, text + "\n")

    def commit(self) -> Path:
        check_destination(self.out, force=self.force, protected=self.protected)
        set_folder_modes(self.root)
        install_folder(self.root, self._target)
        self._committed = True
        return self.out
