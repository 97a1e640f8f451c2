"""Write the deployable bundle: into a temporary folder first, renamed into place at the end.

A bundle is complete or absent: a failure at any point removes the temporary folder,
and an existing bundle is only replaced when the new one is fully written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from edgeport.errors import BadInputError, SecurityError
from edgeport.schemas import FileEntry, Manifest

MANIFEST = "manifest.json"
REPORT = "report.md"
RUNNER = "run.py"
VERIFIER = "verify.py"
VERIFIER_TEMPLATE = "verify_bundle.py"
REQUIREMENTS = "requirements.txt"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_destination(out: Path, *, force: bool) -> None:
    """Fail before any work when the output cannot be written."""
    if out.exists() and not force:
        raise BadInputError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out} exists and is not a folder")
    parent = out.resolve().parent
    if not parent.exists():
        parent.mkdir(parents=True)


def safe_destination(root: Path, relative: str) -> Path:
    """`root / relative`, refusing names that would escape root (from a model repository)."""
    candidate = (root / relative).resolve()
    if root.resolve() not in candidate.parents:
        raise SecurityError(f"refusing file name that escapes the bundle: {relative!r}")
    return candidate


def runner_source(template: str) -> str:
    return resources.files("edgeport.runners").joinpath(template).read_text(encoding="utf-8")


class BundleWriter:
    """Collects files in a temporary folder beside `out`; `commit` renames it into place."""

    def __init__(self, out: Path, *, force: bool) -> None:
        self.out = out
        self.force = force
        out.parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    def copy(self, source: Path, relative: str | None = None) -> None:
        destination = safe_destination(self.root, relative or source.name)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)

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
        if self.out.exists():
            if not self.force:
                raise BadInputError(f"{self.out} already exists; pass --force to replace it")
            previous = self.out.with_name(f".{self.out.name}.previous")
            shutil.rmtree(previous, ignore_errors=True)
            self.out.rename(previous)
            self.root.rename(self.out)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            self.root.rename(self.out)
        return self.out
