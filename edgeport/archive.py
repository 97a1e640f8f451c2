"""Reproducible bundle archives and checked unpacking.

`pack` writes a .tar.gz whose bytes depend only on the bundle's files: entries sorted,
mtime 0, uid/gid 0 with empty owner names, permissions normalised to 0644/0755, and a
gzip header with mtime 0 and no file name. (The compressed bytes also depend on the
zlib in use; the same edgeport environment gives the same archive.) Device runs kept in
the bundle's device-runs/ folder are not packed: they are records about the bundle.

`unpack` reads the archive twice through one open file. First a scan of the raw tar
stream, decompressed in fixed-size pieces, walks the 512-byte headers itself, because
Python's tarfile reads a pax header wholly into memory and expands sparse members. With
bounded memory, and before anything is written, it refuses: entries that would escape the
target folder (absolute paths, `..`), links, devices, FIFOs, sparse members, duplicates, a
file and a folder of one name, extended headers over 64 KiB, more than 10 000 entries, an
archive without manifest.json, and any file that manifest.json (read during the scan) does
not list with exactly its size. Then tarfile streams each member into a staging folder
beside the destination, which must be the member the scan saw, and whose sha256 must be
the manifest's; the staging folder replaces the destination only once all of it is there.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO, cast

from edgeport.bundle import (
    MANIFEST,
    check_destination,
    file_mode,
    install_folder,
    is_empty_folder,
    make_parents,
    nearest_existing,
    remove_created,
    set_folder_modes,
    shown,
)
from edgeport.errors import BadInputError, EdgeportError, VerificationError
from edgeport.runners import ondevice
from edgeport.runners.ondevice import DEVICE_RUNS, sha256_file

ARCHIVE_SUFFIX = ".tar.gz"
_TAR_FORMAT = tarfile.PAX_FORMAT
_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"

# Limits of what unpack accepts; a bundle is a few dozen files in one or two folders.
_MAX_MEMBERS = 10_000
_MAX_EXTENDED_HEADER = 64 * 1024
# tarfile keeps every member with a copy of its pax records (global ones included) until
# the end: bound their number and total size, not only each header's.
_MAX_EXTENDED_TOTAL = 4 * 1024 * 1024
_MAX_PAX_RECORDS = 32
_MAX_GLOBAL_KEYS = 16
# tarfile recurses once per extended header before an entry.
_MAX_HEADER_CHAIN = 8
_MAX_NAME_CHARS = 1024
_MAX_DEPTH = 32
# Names and their parent folders are kept during the scan (duplicates, file-vs-folder).
_MAX_NAMES_TOTAL = 16 * 1024 * 1024
_MAX_MANIFEST_BYTES = 32 * 1024 * 1024
_MAX_TOTAL_BYTES = 64 * 1024**3
# Writers pad the end-of-archive marker to a record (10 KiB for tarfile and GNU tar).
_MAX_TRAILING_BYTES = 4 * 1024 * 1024
_SPACE_PER_ENTRY = 4096

_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)
_LINKS = (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.GNUTYPE_LONGLINK)
_SPECIAL = (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE)
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# What tarfile itself raises while reading a damaged archive.
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


class UnsafeArchiveError(BadInputError):
    """An archive entry would escape the target folder, is not a plain file or folder, or
    does not match the bundle's manifest.json; refused before anything is written."""


@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ArchiveMember:
    """One entry as the scan read it: `name` normalised ("a/b"), `tar_name` as tarfile
    reports it (to check that extraction reads the same entries)."""

    name: str
    tar_name: str
    is_dir: bool
    size: int


@dataclass(frozen=True)
class ManifestFile:
    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class CheckedArchive:
    """What the scan found: the entries in archive order and the files manifest.json lists."""

    members: tuple[ArchiveMember, ...]
    files: Mapping[str, ManifestFile]
    manifest_sha256: str
    total_bytes: int


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
    """The bundle's files and folders; device runs kept beside them (device-runs/) are
    records about the bundle, not part of it, and stay out of the archive."""
    entries = []
    for path in sorted(bundle.rglob("*"), key=lambda p: p.relative_to(bundle).as_posix()):
        if path.relative_to(bundle).parts[0] == DEVICE_RUNS:
            continue
        relative = path.relative_to(bundle).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise UnsafeArchiveError(
                f"{shown(bundle)}: refusing to pack {shown(relative)}: not a plain file or folder"
            )
        if "__pycache__" in path.relative_to(bundle).parts:
            continue
        entries.append(path)
    return entries


def check_bundle_files(bundle: Path) -> list[str]:
    """Integrity only (no runtime needed): one line per changed, missing or extra file.

    What `pack` checks before packing; `edgeport verify` runs the same checks (and more)
    through the bundle's verify.py.
    """
    try:
        manifest = ondevice.load_manifest(bundle)
    except ondevice.BundleError as exc:
        raise BadInputError(str(exc)) from exc
    # An edited manifest (tolerance, runtime settings) is as corrupt as an edited model.
    failures: list[str] = (
        ondevice.check_manifest(manifest)["failures"]
        + ondevice.check_files(bundle, manifest)["failures"]
    )
    return failures


def pack(bundle: Path, out: Path | None = None, *, check: bool = True) -> ArchiveInfo:
    """Write a deterministic .tar.gz of `bundle` (files at the archive root), mode 0644
    less the umask."""
    if not (bundle / MANIFEST).is_file():
        raise BadInputError(f"{shown(bundle)}: not a bundle (no {MANIFEST})")
    if check:
        failures = check_bundle_files(bundle)
        if failures:
            raise VerificationError(
                f"{shown(bundle)} does not match its manifest: " + shown("; ".join(failures), 400)
            )
    out = out or default_archive_path(bundle)
    if out.resolve().is_relative_to(bundle.resolve()):
        raise BadInputError(f"the archive {shown(out)} must not be inside the bundle")
    if out.is_dir():
        raise BadInputError(f"{shown(out)} is a folder; give the archive's file name")
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
        # mkstemp makes the file 0600; an archive is meant to be shared.
        Path(partial).chmod(file_mode(executable=False))
        Path(partial).replace(out)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return ArchiveInfo(out, sha256_file(out), out.stat().st_size)


# --------------------------------------------------------------------------- scan


def _one_line(exc: BaseException) -> str:
    """A library's message as one short line (some span several lines)."""
    return shown(" ".join(str(exc).split()) or type(exc).__name__, 200)


def _unreadable(label: str, exc: BaseException | str) -> BadInputError:
    reason = exc if isinstance(exc, str) else _one_line(exc)
    return BadInputError(f"{label}: not a readable .tar.gz archive ({reason})")


def _refused(label: str, name: str, problem: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{label}: entry {shown(repr(name))} {problem}; refusing to unpack")


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


class _TarStream:
    """The archive's tar bytes, gunzipped when compressed, read in bounded pieces."""

    def __init__(self, raw: BinaryIO, label: str) -> None:
        self.label = label
        try:
            raw.seek(0)
            magic = raw.read(2)
            raw.seek(0)
        except OSError as exc:
            raise _unreadable(label, exc) from exc
        self._gzip = gzip.GzipFile(fileobj=raw, mode="rb") if magic == _GZIP_MAGIC else None
        self.source = cast(BinaryIO, self._gzip) if self._gzip is not None else raw

    def close(self) -> None:
        if self._gzip is not None:
            self._gzip.close()  # leaves `raw` open

    def read(self, size: int) -> bytes:
        """Up to `size` bytes (fewer only at the end)."""
        try:
            return self.source.read(size)
        except _READ_ERRORS as exc:
            raise _unreadable(self.label, exc) from exc

    def read_exact(self, size: int) -> bytes:
        data = self.read(size)
        if len(data) != size:
            raise _unreadable(self.label, "truncated")
        return data

    def skip(self, size: int) -> None:
        while size > 0:
            size -= len(self.read_exact(min(size, _CHUNK)))

    def drain(self, limit: int) -> None:
        """Read to the end (the gzip trailer's CRC is checked there), at most `limit` bytes."""
        left = limit
        while chunk := self.read(min(_CHUNK, left + 1)):
            left -= len(chunk)
            if left < 0:
                raise UnsafeArchiveError(
                    f"{self.label}: more than {limit // 1024} KiB after the end of the "
                    "archive; refusing to unpack"
                )


def _number(field: bytes) -> int:
    """A numeric header field as tarfile reads it: octal text, or base-256 (GNU)."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    text = field.split(b"\0", 1)[0].decode("ascii")  # UnicodeDecodeError is a ValueError
    return int(text.strip() or "0", 8)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode(tarfile.ENCODING, "surrogateescape")


def _pax_text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode(tarfile.ENCODING, "surrogateescape")


@dataclass(frozen=True)
class _Header:
    name: str
    type: bytes
    size: int


def _header(block: bytes, label: str) -> _Header:
    """One 512-byte header, checked as tarfile checks it (checksum, numeric fields)."""
    try:
        checksum = _number(block[148:156])
        for start, end in ((100, 108), (108, 116), (116, 124), (136, 148)):
            _number(block[start:end])  # mode, uid, gid, mtime: tarfile rejects bad ones
        _number(block[329:337])
        _number(block[337:345])
        size = _number(block[124:136])
    except ValueError as exc:
        raise _unreadable(label, "invalid tar header") from exc
    unsigned = 256 + sum(struct.unpack_from("148B8x356B", block))
    signed = 256 + sum(struct.unpack_from("148b8x356b", block))
    if checksum not in (unsigned, signed):
        raise _unreadable(label, "bad tar header checksum")
    kind = block[156:157]
    name = _text(block[0:100])
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        kind = tarfile.DIRTYPE  # old tars mark a folder by its trailing slash
    if kind == tarfile.DIRTYPE:
        name = name.rstrip("/")
    prefix = _text(block[345:500])
    if prefix and kind not in tarfile.GNU_TYPES:
        name = prefix + "/" + name
    return _Header(name, kind, size)


def _pax_records(data: bytes, label: str) -> dict[str, bytes]:
    """Records of a pax header, parsed as tarfile parses them."""
    records: dict[str, bytes] = {}
    position = 0
    while match := _PAX_RECORD.match(data, position):
        try:
            length = int(match.group(1))
        except ValueError as exc:  # more digits than int() accepts
            raise _unreadable(label, "invalid pax header") from exc
        if length == 0:
            raise _unreadable(label, "invalid pax header")
        keyword = _pax_text(match.group(2))
        records[keyword] = data[match.end(2) + 1 : match.start(1) + length - 1]
        position += length
        if len(records) > _MAX_PAX_RECORDS:
            raise UnsafeArchiveError(
                f"{label}: a pax header with more than {_MAX_PAX_RECORDS} records; "
                "refusing to unpack"
            )
    if any(keyword.startswith("GNU.sparse.") for keyword in records):
        raise UnsafeArchiveError(
            f"{label}: a sparse entry (pax GNU.sparse header); refusing to unpack"
        )
    return records


def _normalised(name: str, is_dir: bool, label: str) -> str:
    """The entry's path inside the target folder ("" for the folder itself), or a refusal."""
    if not name or "\\" in name or "\x00" in name or not name.isprintable():
        raise _refused(label, name, "has an invalid name")
    posix = PurePosixPath(name)
    if posix.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _refused(label, name, "is an absolute path")
    if ".." in posix.parts:
        raise _refused(label, name, "escapes the target folder ('..')")
    if len(name) > _MAX_NAME_CHARS or len(posix.parts) > _MAX_DEPTH:
        raise _refused(label, name, f"is longer than {_MAX_NAME_CHARS} characters or too deep")
    normal = "/".join(part for part in posix.parts if part != ".")
    if not normal and not is_dir:
        raise _refused(label, name, "has an invalid name")
    return normal


class _Names:
    """Every entry name and its parent folders: a name may appear once, and a path cannot
    be both a file and a folder (`x/y` then `x`, or `x` then `x/y`)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.is_folder: dict[str, bool] = {}
        self.listed: set[str] = set()
        self.budget = _MAX_NAMES_TOTAL

    def _keep(self, name: str, is_dir: bool) -> None:
        self.budget -= len(name) + 64
        if self.budget < 0:
            raise UnsafeArchiveError(
                f"{self.label}: too many or too long names; refusing to unpack"
            )
        self.is_folder[name] = is_dir

    def add(self, name: str, is_dir: bool) -> None:
        if name in self.listed:
            raise _refused(self.label, name, "appears twice")
        known = self.is_folder.get(name)
        if known is not None and known != is_dir:
            raise _refused(self.label, name, "is both a file and a folder")
        for parent in list(PurePosixPath(name).parents)[:-1]:  # all but "."
            folder = str(parent)
            kind = self.is_folder.get(folder)
            if kind is False:
                raise _refused(self.label, name, f"is inside the file {shown(repr(folder))}")
            if kind is None:
                self._keep(folder, True)
        self.listed.add(name)
        self._keep(name, is_dir)


def _manifest_files(data: bytes, label: str) -> dict[str, ManifestFile]:
    """manifest.json's `files` list (path, sha256, bytes) by path."""
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise UnsafeArchiveError(
            f"{label}: {MANIFEST} is not valid JSON ({_one_line(exc)}); refusing to unpack"
        ) from exc
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        raise UnsafeArchiveError(f"{label}: {MANIFEST} has no 'files' list; refusing to unpack")
    files: dict[str, ManifestFile] = {}
    for entry in entries:
        path = entry.get("path") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        size = entry.get("bytes") if isinstance(entry, dict) else None
        if not (
            isinstance(path, str)
            and isinstance(digest, str)
            and _SHA256.fullmatch(digest)
            and isinstance(size, int)
            and not isinstance(size, bool)
            and size >= 0
        ):
            raise UnsafeArchiveError(
                f"{label}: {MANIFEST}: every 'files' entry needs a path, a sha256 and a byte "
                "count; refusing to unpack"
            )
        if path in files:
            raise UnsafeArchiveError(
                f"{label}: {MANIFEST} lists {shown(repr(path))} twice; refusing to unpack"
            )
        files[path] = ManifestFile(path, digest.lower(), size)
    return files


def _check_listed(member: ArchiveMember, files: Mapping[str, ManifestFile], label: str) -> None:
    if member.is_dir or member.name == MANIFEST:
        return
    entry = files.get(member.name)
    if entry is None:
        raise _refused(label, member.name, f"is not listed in {MANIFEST}")
    if entry.bytes != member.size:
        raise _refused(
            label, member.name, f"is {member.size} bytes but {MANIFEST} lists {entry.bytes}"
        )


def _scan(stream: _TarStream, label: str) -> CheckedArchive:
    members: list[ArchiveMember] = []
    names = _Names(label)
    files: dict[str, ManifestFile] | None = None
    manifest_sha256 = ""
    total = 0
    pax: dict[str, bytes] | None = None  # an 'x' header's records, for the next entry
    long_name: str | None = None  # a GNU 'L' header's name, for the next entry
    global_keys: set[str] = set()
    extended_total = 0
    chain = 0
    while True:
        block = stream.read(_BLOCK)
        if len(block) < _BLOCK:
            first = not members and chain == 0
            raise _unreadable(label, "empty" if first and not block else "truncated")
        if block.count(0) == _BLOCK:  # end of archive
            if pax is not None or long_name is not None:
                raise _unreadable(label, "an extended header without its entry")
            break
        header = _header(block, label)
        if header.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
            chain += 1
            if chain > _MAX_HEADER_CHAIN or pax is not None or long_name is not None:
                raise UnsafeArchiveError(
                    f"{label}: several extended headers for one entry; refusing to unpack"
                )
            if not 0 <= header.size <= _MAX_EXTENDED_HEADER:
                raise UnsafeArchiveError(
                    f"{label}: an extended header of {header.size} bytes; refusing more than "
                    f"{_MAX_EXTENDED_HEADER // 1024} KiB"
                )
            extended_total += header.size
            if extended_total > _MAX_EXTENDED_TOTAL:
                raise UnsafeArchiveError(
                    f"{label}: more than {_MAX_EXTENDED_TOTAL // 2**20} MiB of extended "
                    "headers; refusing to unpack"
                )
            data = stream.read_exact(_padded(header.size))
            if header.type == tarfile.GNUTYPE_LONGNAME:
                long_name = _text(data)
                continue
            records = _pax_records(data, label)
            if header.type == tarfile.XHDTYPE:
                pax = records
                continue
            if {"path", "size", "linkpath"} & set(records):
                # tarfile applies these to later entries inconsistently; no writer needs them.
                raise UnsafeArchiveError(
                    f"{label}: a global pax header that renames or resizes entries; "
                    "refusing to unpack"
                )
            global_keys.update(records)
            if len(global_keys) > _MAX_GLOBAL_KEYS:
                raise UnsafeArchiveError(
                    f"{label}: global pax headers with more than {_MAX_GLOBAL_KEYS} records; "
                    "refusing to unpack"
                )
            continue
        chain = 0
        name, size = header.name, header.size
        if header.type == tarfile.GNUTYPE_SPARSE:
            raise _refused(label, name, "is a sparse file")
        if header.type in _LINKS:
            raise _refused(label, name, "is a link")
        if header.type in _SPECIAL:
            raise _refused(label, name, "is a device, FIFO or other special file")
        if header.type not in (*_REGULAR, tarfile.DIRTYPE):
            raise _refused(label, name, f"has an unsupported type {header.type!r}")
        is_dir = header.type == tarfile.DIRTYPE
        if pax is not None:
            if "path" in pax:
                name = _pax_text(pax["path"]).rstrip("/")
            if "size" in pax:
                try:
                    size = int(pax["size"].decode("ascii"))
                except ValueError as exc:
                    raise _unreadable(label, "invalid size in a pax header") from exc
        if long_name is not None:
            name = long_name.removesuffix("/") if is_dir else long_name
        pax = long_name = None
        if size < 0 or (is_dir and size != 0):
            raise _refused(label, name, f"has an invalid size ({size})")
        if len(members) >= _MAX_MEMBERS:
            raise UnsafeArchiveError(
                f"{label}: more than {_MAX_MEMBERS} entries; refusing to unpack"
            )
        normal = _normalised(name, is_dir, label)
        if normal:
            names.add(normal, is_dir)
        member = ArchiveMember(normal, name, is_dir, size)
        members.append(member)
        if is_dir:
            continue
        total += size
        if total > _MAX_TOTAL_BYTES:
            raise UnsafeArchiveError(
                f"{label}: more than {_MAX_TOTAL_BYTES // 1024**3} GiB of files; refusing to unpack"
            )
        if normal == MANIFEST:
            if size > _MAX_MANIFEST_BYTES:
                raise _refused(label, name, f"is larger than {_MAX_MANIFEST_BYTES // 2**20} MiB")
            data = stream.read_exact(size)
            stream.skip(_padded(size) - size)
            manifest_sha256 = hashlib.sha256(data).hexdigest()
            files = _manifest_files(data, label)
            del data
            for earlier in members:
                _check_listed(earlier, files, label)
            continue
        if files is not None:  # refuse as early as possible once the manifest is known
            _check_listed(member, files, label)
        stream.skip(_padded(size))
    stream.drain(_MAX_TRAILING_BYTES)
    if files is None:
        raise UnsafeArchiveError(
            f"{label}: no {MANIFEST}; not an edgeport bundle archive; refusing to unpack"
        )
    present = {m.name for m in members if not m.is_dir}
    missing = sorted(set(files) - present - {MANIFEST})
    if missing:
        raise VerificationError(
            f"{label} does not match its {MANIFEST}: missing {shown(', '.join(missing))}; "
            "nothing was unpacked"
        )
    return CheckedArchive(tuple(members), files, manifest_sha256, total)


def scan_archive(archive: Path) -> CheckedArchive:
    """Check an archive without writing anything (raises as `unpack` does)."""
    label = shown(archive.name)
    try:
        with archive.open("rb") as raw:
            stream = _TarStream(raw, label)
            try:
                return _scan(stream, label)
            finally:
                stream.close()
    except OSError as exc:
        raise _unreadable(label, exc) from exc


# --------------------------------------------------------------------------- unpack


def _changed(label: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{label} changed while it was being unpacked; refusing to unpack")


def _check_free_space(folder: Path, checked: CheckedArchive, label: str) -> None:
    existing = nearest_existing(folder)
    needed = checked.total_bytes + _SPACE_PER_ENTRY * len(checked.members)
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise BadInputError(
            f"{label} needs {needed / 1e6:,.1f} MB but {shown(existing)} has only "
            f"{free / 1e6:,.1f} MB free; nothing was unpacked"
        )


def _copy_member(source: IO[bytes], target: Path, size: int, label: str) -> str:
    """Stream one member into a new file; its sha256."""
    digest = hashlib.sha256()
    written = 0
    with target.open("xb") as handle:
        while True:
            try:
                chunk = source.read(_CHUNK)
            except _READ_ERRORS as exc:
                raise _unreadable(label, exc) from exc
            if not chunk:
                break
            written += len(chunk)
            if written > size:
                raise _changed(label)
            digest.update(chunk)
            handle.write(chunk)
    if written != size:
        raise _unreadable(label, "truncated")
    return digest.hexdigest()


def _same_member(member: tarfile.TarInfo, expected: ArchiveMember, label: str) -> None:
    is_dir = member.isdir()
    if (
        not (is_dir or member.type in _REGULAR)
        or member.sparse is not None
        or member.name != expected.tar_name
        or is_dir != expected.is_dir
        or (not is_dir and member.size != expected.size)
    ):
        raise _changed(label)


def _open_tar(stream: _TarStream, label: str) -> tarfile.TarFile:
    """tarfile in stream mode: members in order, nothing read twice, no seeking."""
    try:
        return tarfile.open(fileobj=stream.source, mode="r|")
    except _READ_ERRORS as exc:
        raise _unreadable(label, exc) from exc


def _extract(raw: BinaryIO, checked: CheckedArchive, staging: Path, label: str) -> None:
    """Write every scanned member under `staging`, checking each file's sha256."""
    stream = _TarStream(raw, label)
    try:
        with _open_tar(stream, label) as tar:
            entries = iter(tar)
            for expected in checked.members:
                try:
                    member = next(entries, None)
                except _READ_ERRORS as exc:
                    raise _unreadable(label, exc) from exc
                if member is None:
                    raise _changed(label)
                _same_member(member, expected, label)
                if not expected.name:
                    continue
                target = staging.joinpath(*expected.name.split("/"))
                if expected.is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    source = tar.extractfile(member)
                except _READ_ERRORS as exc:
                    raise _unreadable(label, exc) from exc
                if source is None:
                    raise _changed(label)
                with source:
                    digest = _copy_member(source, target, expected.size, label)
                if expected.name == MANIFEST:
                    if digest != checked.manifest_sha256:
                        raise _changed(label)
                elif digest != checked.files[expected.name].sha256:
                    raise VerificationError(
                        f"{label}: {shown(repr(expected.name))} does not match its sha256 in "
                        f"{MANIFEST}; nothing was unpacked"
                    )
                target.chmod(file_mode(executable=bool(member.mode & stat.S_IXUSR)))
            try:
                extra = next(entries, None)
            except _READ_ERRORS as exc:
                raise _unreadable(label, exc) from exc
            if extra is not None:
                raise _changed(label)
    finally:
        stream.close()


def unpack(archive: Path, dest: Path, *, force: bool = False) -> Path:
    """Extract a bundle archive into `dest`, all or nothing; returns `dest`.

    `dest` must not exist or be an empty folder; with `force` an existing edgeport bundle
    folder is replaced (`check_destination`'s rules; the archive is protected too).
    Raises BadInputError/UnsafeArchiveError (exit 2) when the archive is refused or
    unreadable and VerificationError (exit 3) when a file's content does not match
    manifest.json; either way `dest` is untouched and nothing is left behind.
    """
    if not archive.is_file():
        raise BadInputError(f"archive not found: {shown(archive)}")
    replace = force or is_empty_folder(dest)
    check_destination(dest, force=replace, protected=(archive,))
    label = shown(archive.name)
    target = dest.resolve()
    try:
        raw = archive.open("rb")
    except OSError as exc:
        raise _unreadable(label, exc) from exc
    with raw:
        stream = _TarStream(raw, label)
        try:
            checked = _scan(stream, label)
        finally:
            stream.close()
        _check_free_space(target.parent, checked, label)
        created = make_parents(target.parent)
        staging: Path | None = None
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
            try:
                _extract(raw, checked, staging, label)
            except OSError as exc:  # writing: disk full, permissions
                raise EdgeportError(
                    f"cannot unpack into {shown(target.parent)}: {_one_line(exc)}"
                ) from exc
            set_folder_modes(staging)
            check_destination(dest, force=replace, protected=(archive,))
            install_folder(staging, target)
        except BaseException:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            remove_created(created)
            raise
    return dest
