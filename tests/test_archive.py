"""Reproducible archives, and unpacking that refuses entries escaping the target folder."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from bundle_fixtures import copy_bundle, read_manifest, tiny_bundle_once
from conftest import run_cli

from edgeport.archive import pack, unpack
from edgeport.errors import BadInputError, VerificationError
from edgeport.reproducibility import content_digest
from edgeport.schemas import FileEntry


@pytest.fixture(scope="session")
def bundle(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle_once(tiny_bert, tmp_path_factory.mktemp("bundle"))


def test_same_content_gives_the_same_bytes(bundle: Path, tmp_path: Path) -> None:
    first = pack(bundle, tmp_path / "first.tar.gz")
    copy = copy_bundle(bundle, tmp_path / "elsewhere" / "renamed")
    for path in copy.iterdir():  # other mtimes, other permissions, other folder name
        os.utime(path, (1_700_000_000, 1_700_000_000))
        path.chmod(0o600)
    (copy / "run.py").chmod(0o700)
    (copy / "verify.py").chmod(0o700)
    (bundle / "run.py").chmod(0o755)
    (bundle / "verify.py").chmod(0o755)
    second = pack(copy, tmp_path / "second.tar.gz")
    third = pack(bundle, tmp_path / "third.tar.gz")
    assert first.sha256 != "" and second.sha256 == third.sha256
    assert second.path.read_bytes() == third.path.read_bytes()

    raw = second.path.read_bytes()
    assert raw[4:8] == b"\0\0\0\0" and not raw[3] & 0x08  # gzip: mtime 0, no file name
    with tarfile.open(second.path, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and "manifest.json" in names and "golden.npz" in names
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    modes = {m.name: m.mode for m in members}
    assert modes["run.py"] == 0o755 and modes["model.onnx"] == 0o644


def test_round_trip_verifies_and_verify_accepts_archives(bundle: Path, tmp_path: Path) -> None:
    archive = tmp_path / "bundle.tar.gz"
    packed = run_cli("pack", str(bundle), "--out", str(archive), "--json")
    assert packed.returncode == 0, packed.stderr
    assert json.loads(packed.stdout)["sha256"] == pack(bundle, tmp_path / "again.tar.gz").sha256
    dest = unpack(archive, tmp_path / "unpacked")
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in bundle.iterdir())
    checked = run_cli("verify", str(archive), "--runs", "1")
    assert checked.returncode == 0, checked.stderr
    assert "PASS" in checked.stderr


def test_pack_refuses_a_tampered_bundle(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path / "bundle")
    (copy / "vocab.txt").write_text("changed\n")
    with pytest.raises(VerificationError, match=r"vocab\.txt"):
        pack(copy, tmp_path / "bundle.tar.gz")
    assert not (tmp_path / "bundle.tar.gz").exists()


def test_reproducibility_note_covers_stable_files(bundle: Path) -> None:
    note = read_manifest(bundle)["reproducibility"]
    entries = [FileEntry(**entry) for entry in read_manifest(bundle)["files"]]
    assert note["content_sha256"] == content_digest(
        entries, {v["path"] for v in note["volatile"]}, note["manifest_sha256"]
    )
    assert "report.md" not in note["stable_files"] and "model.onnx" in note["stable_files"]
    assert "attempts" in note["volatile"][0]["fields"]


def _evil_archive(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        manifest = b'{"created_by": "edgeport", "files": []}'
        ok = tarfile.TarInfo("manifest.json")
        ok.size = len(manifest)
        tar.addfile(ok, io.BytesIO(manifest))
        info = tarfile.TarInfo(
            {"absolute": "/tmp/evil", "dotdot": "../evil", "nested-dotdot": "a/../../evil"}.get(
                kind, "evil"
            )
        )
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "manifest.json"
        elif kind == "device":
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        elif kind == "fifo":
            info.type = tarfile.FIFOTYPE
        data = b"evil"
        info.size = len(data) if info.type == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if info.size else None)
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("absolute", "absolute path"),
        ("dotdot", "escapes the target folder"),
        ("nested-dotdot", "escapes the target folder"),
        ("symlink", "is a link"),
        ("hardlink", "is a link"),
        ("device", "special file"),
        ("fifo", "special file"),
    ],
)
def test_unpack_refuses_escaping_entries(tmp_path: Path, kind: str, reason: str) -> None:
    archive = _evil_archive(tmp_path / f"{kind}.tar.gz", kind)
    with pytest.raises(BadInputError, match=f"{reason}.*; refusing to unpack"):
        unpack(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and not (tmp_path / "evil").exists()
    result = run_cli("unpack", str(archive), str(tmp_path / "dest"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "refusing" in result.stderr
    assert run_cli("verify", str(archive)).returncode == 2


def test_unpack_rejects_garbage_and_existing_destination(bundle: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(gzip.compress(b"not a tar file at all" * 40))
    assert run_cli("unpack", str(garbage), str(tmp_path / "dest")).returncode == 2
    archive = pack(bundle, tmp_path / "ok.tar.gz").path
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(BadInputError, match="already exists"):
        unpack(archive, tmp_path / "taken")
    with pytest.raises(BadInputError, match="not an edgeport bundle"):  # --force: bundles only
        unpack(archive, tmp_path / "taken", force=True)
    assert (tmp_path / "taken" / "file").read_text() == "x"
    previous = copy_bundle(bundle, tmp_path / "previous")
    (previous / "stale.txt").write_text("from an older bundle")
    assert unpack(archive, previous, force=True).joinpath("manifest.json").is_file()
    assert not (previous / "stale.txt").exists()
