"""Reproducible bundle archives and safe unpacking.

`pack` writes a .tar.gz whose bytes depend only on the bundle's files: entries sorted,
mtime 0, uid/gid 0 with empty owner names, permissions normalised to 0644/0755, and a
gzip header with mtime 0 and no file name. (The compressed bytes also depend on the
zlib in use; the same edgeport environment gives the same archive.)

`unpack` refuses, before writing anything, an archive with an entry that would escape
the target folder: absolute paths, `..`, links, devices, FIFOs, duplicates.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgeport.bundle import MANIFEST, sha256_file
from edgeport.errors import BadInputError, VerificationError

ARCHIVE_SUFFIX = ".tar.gz"
_TAR_FORMAT = tarfile.PAX_FORMAT
_MAX_MEMBERS = 10_000


class UnsafeArchiveError(BadInputError):
    """An archive entry would escape the target folder or is not a plain file or folder."""


@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    sha256: str
    bytes: int


# --------------------------------------------------------------------------- pack


def default_archive_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ARCHIVE_SUFFIX)


def _tarinfo(name: str, *, directory: bool, executable: bool, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory or executable else 0o644
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _entries(bundle: Path) -> list[Path]:
    entries = []
    for path in sorted(bundle.rglob("*"), key=lambda p: p.relative_to(bundle).as_posix()):
        relative = path.relative_to(bundle).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise UnsafeArchiveError(
                f"{bundle}: refusing to pack {relative}: not a plain file or folder"
            )
        if "__pycache__" in path.relative_to(bundle).parts:
            continue
        entries.append(path)
    return entries


def pack(bundle: Path, out: Path | None = None, *, check: bool = True) -> ArchiveInfo:
    """Write a deterministic .tar.gz of `bundle` (files at the archive root)."""
    if not (bundle / MANIFEST).is_file():
        raise BadInputError(f"{bundle}: not a bundle (no {MANIFEST})")
    if check:
        from edgeport.verify import check_bundle_files

        failures = check_bundle_files(bundle)
        if failures:
            raise VerificationError(f"{bundle} does not match its manifest: " + "; ".join(failures))
    out = out or default_archive_path(bundle)
    if out.resolve().is_relative_to(bundle.resolve()):
        raise BadInputError(f"the archive {out} must not be inside the bundle")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
            tarfile.open(fileobj=gz, mode="w", format=_TAR_FORMAT) as tar,
        ):
            for path in _entries(bundle):
                name = path.relative_to(bundle).as_posix()
                if path.is_dir():
                    tar.addfile(_tarinfo(name, directory=True, executable=True))
                    continue
                executable = bool(path.stat().st_mode & 0o111)
                info = _tarinfo(
                    name, directory=False, executable=executable, size=path.stat().st_size
                )
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
        Path(partial).replace(out)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return ArchiveInfo(out, sha256_file(out), out.stat().st_size)


# --------------------------------------------------------------------------- unpack


def _check_member(member: tarfile.TarInfo, archive: Path) -> str:
    name = member.name
    where = f"{archive.name}: entry {name!r}"
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"{where} is a link; refusing to unpack")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(
            f"{where} is a device, FIFO or other special file; refusing to unpack"
        )
    if not name or "\\" in name or "\x00" in name:
        raise UnsafeArchiveError(f"{where} has an invalid name; refusing to unpack")
    posix = PurePosixPath(name)
    if posix.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{where} is an absolute path; refusing to unpack")
    if ".." in posix.parts:
        raise UnsafeArchiveError(f"{where} escapes the target folder ('..'); refusing to unpack")
    normal = "/".join(part for part in posix.parts if part != ".")
    if not normal:
        if member.isdir():
            return ""
        raise UnsafeArchiveError(f"{where} has an invalid name; refusing to unpack")
    return normal


def read_members(archive: Path) -> list[tuple[tarfile.TarInfo, str]]:
    """Every member with its normalised name, after checking them all; nothing is written."""
    if not archive.is_file():
        raise BadInputError(f"archive not found: {archive}")
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise BadInputError(f"{archive}: not a readable tar archive: {exc}") from exc
    if len(members) > _MAX_MEMBERS:
        raise UnsafeArchiveError(
            f"{archive.name}: {len(members)} entries; refusing more than {_MAX_MEMBERS}"
        )
    checked: list[tuple[tarfile.TarInfo, str]] = []
    seen: dict[str, bool] = {}
    for member in members:
        name = _check_member(member, archive)
        if not name:
            continue
        if name in seen:
            raise UnsafeArchiveError(
                f"{archive.name}: entry {name!r} appears twice; refusing to unpack"
            )
        for parent in PurePosixPath(name).parents:
            if str(parent) != "." and seen.get(str(parent)) is False:
                raise UnsafeArchiveError(
                    f"{archive.name}: entry {name!r} is inside a file; refusing to unpack"
                )
        seen[name] = member.isdir()
        checked.append((member, name))
    return checked


def unpack(archive: Path, dest: Path, *, force: bool = False) -> Path:
    """Extract a checked archive into `dest` (which must not exist, unless `force`)."""
    members = read_members(archive)
    if dest.exists() and not force and (not dest.is_dir() or any(dest.iterdir())):
        raise BadInputError(f"{dest} already exists; pass --force to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member, name in members:
                target = staging.joinpath(*PurePosixPath(name).parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    target.chmod(0o755)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise UnsafeArchiveError(f"{archive.name}: entry {name!r} has no data")
                with source, target.open("xb") as handle:
                    shutil.copyfileobj(source, handle)
                target.chmod(0o755 if member.mode & stat.S_IXUSR else 0o644)
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
