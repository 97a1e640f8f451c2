"""Unpacking hostile archives: refused before anything is written, in bounded memory.

Every archive here is built in the test, a few KB at most; the bombs declare gigabytes
(or megabytes of header) that a naive unpack would write or hold in memory. "Nothing
written" is asserted on disk, memory with tracemalloc, and exit codes through the CLI.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_cli

from edgeport import archive as archive_module
from edgeport import bundle as bundle_module
from edgeport.archive import UnsafeArchiveError, pack, scan_archive, unpack
from edgeport.errors import BadInputError, VerificationError
from edgeport.verify import verify

GIB = 1024**3
FILES = {"model.onnx": b"weights " * 64, "run.py": b"print('hello')\n", "sub/vocab.txt": b"a\nb\n"}


def manifest_for(files: dict[str, bytes], **override: object) -> bytes:
    entries = [
        {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        for name, data in files.items()
    ]
    manifest = {"created_by": "edgeport", "runtime": {}, "files": entries, **override}
    return json.dumps(manifest, indent=2).encode()


def fake_bundle(folder: Path, files: dict[str, bytes] | None = None) -> Path:
    """A folder shaped like a bundle (manifest.json by edgeport listing every file)."""
    files = FILES if files is None else files
    folder.mkdir(parents=True)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if "run.py" in files:
        (folder / "run.py").chmod(0o755)
    (folder / "manifest.json").write_bytes(manifest_for(files))
    return folder


Entry = tuple[tarfile.TarInfo, bytes]


def file_entry(name: str, data: bytes, **pax: str) -> Entry:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def dir_entry(name: str) -> Entry:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, b""


def write_archive(
    path: Path,
    entries: Sequence[Entry],
    *,
    tar_format: int = tarfile.PAX_FORMAT,
    pax_headers: dict[str, str] | None = None,
) -> Path:
    with tarfile.open(path, "w:gz", format=tar_format, pax_headers=pax_headers) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return path


def bundle_entries(
    files: dict[str, bytes] | None = None, manifest: bytes | None = None
) -> list[Entry]:
    files = FILES if files is None else files
    entries = [file_entry("manifest.json", manifest or manifest_for(files))]
    return entries + [file_entry(name, data) for name, data in files.items()]


def checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def gnu_sparse_archive(path: Path, real_size: int = GIB) -> Path:
    """A GNU sparse member ('S') holding 4 bytes that expand to `real_size` on extraction."""
    data = b"evil"
    manifest = manifest_for({"model.onnx": data})
    header = bytearray(file_entry("model.onnx", data)[0].tobuf(tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:398] = b"%011o\0" % (real_size - len(data))  # one chunk: offset, size
    header[398:410] = b"%011o\0" % len(data)
    header[483:495] = b"%011o\0" % real_size
    checksum(header)
    info, payload = file_entry("manifest.json", manifest)
    raw = info.tobuf(tarfile.GNU_FORMAT) + padded(payload)
    raw += bytes(header) + padded(data) + b"\0" * 1024
    path.write_bytes(gzip.compress(raw))
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "out" / "bundle"


def assert_nothing_written(dest: Path) -> None:
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def assert_cli_refuses(archive: Path, dest: Path, code: int, *words: str) -> str:
    result = run_cli("unpack", str(archive), str(dest))
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]
    assert_nothing_written(dest)
    return lines[0]


@pytest.fixture
def memory() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


# --------------------------------------------------------------------------- normal use


def test_round_trip_keeps_files_and_sets_modes(tmp_path: Path) -> None:
    source = fake_bundle(tmp_path / "bundle")
    first = pack(source, tmp_path / "a.tar.gz", check=False)
    again = pack(source, tmp_path / "b.tar.gz", check=False)
    assert first.path.read_bytes() == again.path.read_bytes()
    out = unpack(first.path, tmp_path / "unpacked")
    assert out == tmp_path / "unpacked"
    for name, data in {**FILES, "manifest.json": manifest_for(FILES)}.items():
        assert (out / name).read_bytes() == data
    umask = bundle_module.process_umask()
    assert stat.S_IMODE(out.stat().st_mode) == 0o755 & ~umask
    assert stat.S_IMODE((out / "sub").stat().st_mode) == 0o755 & ~umask
    assert stat.S_IMODE((out / "run.py").stat().st_mode) == 0o755 & ~umask
    assert stat.S_IMODE((out / "model.onnx").stat().st_mode) == 0o644 & ~umask
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o644 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.tar.gz",
        "b.tar.gz",
        "bundle",
        "unpacked",
    ]


def test_modes_follow_the_umask(tmp_path: Path) -> None:
    source = fake_bundle(tmp_path / "bundle")
    previous = os.umask(0o027)
    bundle_module.process_umask.cache_clear()
    try:
        packed = pack(source, tmp_path / "b.tar.gz", check=False)
        out = unpack(packed.path, tmp_path / "unpacked")
    finally:
        os.umask(previous)
        bundle_module.process_umask.cache_clear()
    assert stat.S_IMODE(packed.path.stat().st_mode) == 0o640
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "run.py").stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "model.onnx").stat().st_mode) == 0o640


def test_a_benign_global_pax_header_is_accepted(tmp_path: Path) -> None:
    archive = write_archive(
        tmp_path / "g.tar.gz", bundle_entries(), pax_headers={"comment": "git archive"}
    )
    assert (unpack(archive, tmp_path / "out") / "sub" / "vocab.txt").read_bytes() == b"a\nb\n"


def test_long_names_through_pax_and_gnu_headers(tmp_path: Path) -> None:
    long_name = "d" * 60 + "/" + "f" * 90
    files = {long_name: b"x"}
    for tar_format in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        archive = write_archive(
            tmp_path / f"{tar_format}.tar.gz", bundle_entries(files), tar_format=tar_format
        )
        out = unpack(archive, tmp_path / f"out{tar_format}")
        assert (out / long_name).read_bytes() == b"x"


def test_base_256_sizes_are_read_as_tarfile_reads_them(tmp_path: Path) -> None:
    # GNU tar writes sizes of 8 GiB and more in base 256; a small one reads the same way.
    data = FILES["model.onnx"]
    header = bytearray(file_entry("model.onnx", data)[0].tobuf(tarfile.GNU_FORMAT))
    header[124:136] = b"\x80" + len(data).to_bytes(11, "big")
    checksum(header)
    raw = b""
    for name, content in (("manifest.json", manifest_for(FILES)), ("run.py", FILES["run.py"])):
        raw += file_entry(name, content)[0].tobuf(tarfile.GNU_FORMAT) + padded(content)
    raw += bytes(header) + padded(data)
    info, content = file_entry("sub/vocab.txt", FILES["sub/vocab.txt"])
    raw += info.tobuf(tarfile.GNU_FORMAT) + padded(content) + b"\0" * 1024
    archive = tmp_path / "base256.tar.gz"
    archive.write_bytes(gzip.compress(raw))
    assert (unpack(archive, tmp_path / "out") / "model.onnx").read_bytes() == data


# --------------------------------------------------------------------------- bombs


def test_sparse_member_is_refused_before_writing(tmp_path: Path, dest: Path) -> None:
    archive = gnu_sparse_archive(tmp_path / "sparse.tar.gz")
    assert archive.stat().st_size < 1024
    with tarfile.open(archive) as tar:  # what a naive unpack would write
        assert tar.getmember("model.onnx").size == GIB
    with pytest.raises(UnsafeArchiveError, match="sparse"):
        unpack(archive, dest)
    assert_nothing_written(dest)
    assert_cli_refuses(archive, dest, 2, "sparse", "refusing")
    verified = run_cli("verify", str(archive))  # refused before any extraction
    assert verified.returncode == 2 and "sparse" in verified.stderr


def test_pax_sparse_member_is_refused(tmp_path: Path, dest: Path) -> None:
    entries = bundle_entries({"model.onnx": b"evil"})
    entries[1][0].pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.realsize": str(GIB),
        "GNU.sparse.name": "model.onnx",
    }
    archive = write_archive(tmp_path / "pax-sparse.tar.gz", entries)
    with pytest.raises(UnsafeArchiveError, match="sparse"):
        unpack(archive, dest)
    assert_nothing_written(dest)


def test_huge_pax_header_is_refused_in_bounded_memory(
    tmp_path: Path, dest: Path, memory: None
) -> None:
    entries = bundle_entries()
    entries[1][0].pax_headers = {"comment": "a" * (16 * 1024 * 1024)}
    archive = write_archive(tmp_path / "pax.tar.gz", entries)
    assert archive.stat().st_size < 100_000
    del entries
    tracemalloc.reset_peak()
    with pytest.raises(UnsafeArchiveError, match="extended header"):
        unpack(archive, dest)
    _, peak = tracemalloc.get_traced_memory()
    assert peak < 4 * 1024 * 1024
    assert_nothing_written(dest)


def test_huge_gnu_long_name_is_refused(tmp_path: Path, dest: Path) -> None:
    files = {"n" * 100_000: b"x"}
    archive = write_archive(
        tmp_path / "long.tar.gz", bundle_entries(files), tar_format=tarfile.GNU_FORMAT
    )
    with pytest.raises(UnsafeArchiveError, match="extended header"):
        unpack(archive, dest)
    assert_nothing_written(dest)


def test_many_pax_headers_are_bounded_in_total(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each header is small, but tarfile keeps all of them while extracting.
    monkeypatch.setattr(archive_module, "_MAX_EXTENDED_TOTAL", 256 * 1024)
    files = {f"f{i}": b"" for i in range(10)}
    entries = [file_entry("manifest.json", manifest_for(files))]
    entries += [file_entry(name, data, comment="c" * 60_000) for name, data in files.items()]
    archive = write_archive(tmp_path / "many-pax.tar.gz", entries)
    with pytest.raises(UnsafeArchiveError, match="MiB of extended headers"):
        unpack(archive, dest)
    many_records = {f"key{i}": "v" for i in range(40)}
    entries = bundle_entries()
    entries[1][0].pax_headers = many_records
    archive = write_archive(tmp_path / "many-records.tar.gz", entries)
    with pytest.raises(UnsafeArchiveError, match="more than 32 records"):
        unpack(archive, dest)
    some_records = {f"key{i}": "v" for i in range(20)}
    archive = write_archive(
        tmp_path / "many-globals.tar.gz", bundle_entries(), pax_headers=some_records
    )
    with pytest.raises(UnsafeArchiveError, match="global pax headers"):
        unpack(archive, dest)
    assert_nothing_written(dest)


def test_global_pax_header_that_renames_entries_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = write_archive(
        tmp_path / "g.tar.gz", bundle_entries(), pax_headers={"path": "elsewhere"}
    )
    with pytest.raises(UnsafeArchiveError, match="global pax header"):
        unpack(archive, dest)


def test_member_count_is_capped(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive_module, "_MAX_MEMBERS", 5)
    entries = bundle_entries() + [dir_entry(f"d{i}") for i in range(5)]
    archive = write_archive(tmp_path / "many.tar.gz", entries)
    with pytest.raises(UnsafeArchiveError, match="more than 5 entries"):
        unpack(archive, dest)
    assert_nothing_written(dest)


def test_total_size_is_capped(tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_module, "_MAX_TOTAL_BYTES", 100)
    archive = write_archive(tmp_path / "big.tar.gz", bundle_entries())
    with pytest.raises(UnsafeArchiveError, match="GiB of files"):
        unpack(archive, dest)
    assert_nothing_written(dest)


def test_oversized_manifest_is_refused(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive_module, "_MAX_MANIFEST_BYTES", 64)
    archive = write_archive(tmp_path / "m.tar.gz", bundle_entries())
    with pytest.raises(UnsafeArchiveError, match=r"manifest\.json.*larger than"):
        unpack(archive, dest)


def test_not_enough_free_space_is_refused(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = write_archive(tmp_path / "ok.tar.gz", bundle_entries())
    almost_full = SimpleNamespace(total=1 << 40, used=(1 << 40) - 10, free=10)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: almost_full)
    with pytest.raises(BadInputError, match="free; nothing was unpacked"):
        unpack(archive, dest)
    assert_nothing_written(dest)


def test_trailing_data_after_the_archive_is_bounded(
    tmp_path: Path, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive_module, "_MAX_TRAILING_BYTES", 64 * 1024)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in bundle_entries():
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "trailing.tar.gz"
    archive.write_bytes(gzip.compress(raw.getvalue() + b"\0" * (1024 * 1024)))
    with pytest.raises(UnsafeArchiveError, match="after the end of the archive"):
        unpack(archive, dest)


# --------------------------------------------------------------------------- manifest


def test_files_missing_from_the_manifest_are_refused(tmp_path: Path, dest: Path) -> None:
    entries = [*bundle_entries(), file_entry("extra.bin", b"\0" * 100)]
    archive = write_archive(tmp_path / "unlisted.tar.gz", entries)
    assert_cli_refuses(archive, dest, 2, "extra.bin", "not listed in manifest.json")


@pytest.mark.parametrize("manifest_first", [True, False])
def test_sizes_must_match_the_manifest(tmp_path: Path, dest: Path, manifest_first: bool) -> None:
    claimed = manifest_for({**FILES, "model.onnx": b"tiny"})
    entries = bundle_entries(manifest=claimed)
    if not manifest_first:
        entries.append(entries.pop(0))
    archive = write_archive(tmp_path / "size.tar.gz", entries)
    with pytest.raises(UnsafeArchiveError, match=r"model\.onnx.*bytes but manifest\.json lists 4"):
        unpack(archive, dest)
    assert_nothing_written(dest)


def test_content_must_match_the_manifest_sha256(tmp_path: Path, dest: Path) -> None:
    tampered = {**FILES, "model.onnx": FILES["model.onnx"].replace(b"w", b"W")}
    archive = write_archive(
        tmp_path / "tampered.tar.gz", bundle_entries(tampered, manifest=manifest_for(FILES))
    )
    with pytest.raises(VerificationError, match=r"model\.onnx.*sha256"):
        unpack(archive, dest)
    assert_nothing_written(dest)
    assert_cli_refuses(archive, dest, 3, "sha256")
    verified = run_cli("verify", str(archive), "--json")
    assert verified.returncode == 3
    assert json.loads(verified.stdout)["passed"] is False
    assert "FAIL" in verified.stderr and "sha256" in verified.stderr


def test_files_listed_but_absent_fail_verification(tmp_path: Path, dest: Path) -> None:
    archive = write_archive(
        tmp_path / "missing.tar.gz",
        bundle_entries({"run.py": FILES["run.py"]}, manifest=manifest_for(FILES)),
    )
    with pytest.raises(VerificationError, match=r"missing model\.onnx, sub/vocab\.txt"):
        unpack(archive, dest)
    assert_nothing_written(dest)


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        (None, "no manifest.json"),
        (b"{not json", "not valid JSON"),
        (b'{"files": 3}', "no 'files' list"),
        (b'{"files": [{"path": "a"}]}', "needs a path, a sha256"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_malformed_manifests_are_refused(
    tmp_path: Path, dest: Path, manifest: bytes | None, problem: str
) -> None:
    entries = [] if manifest is None else [file_entry("manifest.json", manifest)]
    archive = write_archive(tmp_path / "m.tar.gz", entries)
    with pytest.raises(UnsafeArchiveError, match=problem):
        unpack(archive, dest)
    assert_nothing_written(dest)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("order", [("x/y", "x"), ("x", "x/y")])
def test_a_path_cannot_be_both_file_and_folder(
    tmp_path: Path, dest: Path, order: tuple[str, str]
) -> None:
    files = {order[0]: b"1", order[1]: b"2"}
    entries = [file_entry("manifest.json", manifest_for(files))]
    entries += [file_entry(name, data) for name, data in files.items()]
    archive = write_archive(tmp_path / "clash.tar.gz", entries)
    line = assert_cli_refuses(archive, dest, 2, "refusing")
    assert "both a file and a folder" in line or "inside the file" in line


def test_folder_entry_after_its_files_is_accepted(tmp_path: Path) -> None:
    entries = [*bundle_entries(), dir_entry("sub")]
    archive = write_archive(tmp_path / "late-dir.tar.gz", entries)
    assert (unpack(archive, tmp_path / "out") / "sub" / "vocab.txt").is_file()


@pytest.mark.parametrize("damage", ["truncated", "not-gzip", "gzip-not-tar", "empty", "garbled"])
def test_unreadable_archives_are_one_line_exit_2(tmp_path: Path, dest: Path, damage: str) -> None:
    good = write_archive(tmp_path / "good.tar.gz", bundle_entries()).read_bytes()
    content = {
        "truncated": good[: len(good) // 2],
        "not-gzip": b"PK\x03\x04 this is a zip file, or something else\n" * 20,
        "gzip-not-tar": gzip.compress(b"not a tar file at all\n" * 40),
        "empty": b"",
        "garbled": good[:40] + bytes(255 - b for b in good[40:80]) + good[80:],
    }[damage]
    archive = tmp_path / f"{damage}.tar.gz"
    archive.write_bytes(content)
    with pytest.raises(BadInputError):
        scan_archive(archive)
    assert_cli_refuses(archive, dest, 2, "error:")


def test_an_archive_changed_after_the_scan_is_refused(tmp_path: Path) -> None:
    first = write_archive(tmp_path / "first.tar.gz", bundle_entries())
    other = {**FILES, "model.onnx": b"other weights"}
    second = write_archive(tmp_path / "second.tar.gz", bundle_entries(other))
    checked = scan_archive(first)
    staging = tmp_path / "staging"
    staging.mkdir()
    with second.open("rb") as raw, pytest.raises(UnsafeArchiveError, match="changed"):
        archive_module._extract(raw, checked, staging, "second.tar.gz")


def test_verify_refuses_a_bomb_without_extracting(tmp_path: Path) -> None:
    archive = gnu_sparse_archive(tmp_path / "sparse.tar.gz", real_size=64 * GIB)
    with pytest.raises(UnsafeArchiveError, match="sparse"):
        verify(archive)
