"""Where bundles may be written: `--force` replaces an edgeport bundle, nothing else.

The current folder, its parents, the archive being unpacked and the model being converted
are never removed; a refusal comes before any work, as one line with exit code 2, and
leaves every file where it was.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from test_archive_limits import FILES, bundle_entries, fake_bundle, manifest_for, write_archive

from edgeport import bundle as bundle_module
from edgeport.archive import pack, unpack
from edgeport.bundle import MANIFEST, BundleWriter, check_destination
from edgeport.errors import BadInputError, VerificationError


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its content (None for folders)."""
    return {
        path.relative_to(folder).as_posix(): None if path.is_dir() else path.read_bytes()
        for path in sorted(folder.rglob("*"))
    }


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    source = fake_bundle(tmp_path / "source")
    return pack(source, tmp_path / "bundle.tar.gz", check=False).path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A user's project folder, the current folder of the command."""
    folder = tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    (folder / "notes.txt").write_text("precious\n")
    (folder / "src" / "main.py").write_text("print('precious')\n")
    return folder


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0]


# --------------------------------------------------------------------------- unpack


@pytest.mark.parametrize("target", [".", "..", "../project", "src/.."])
def test_unpack_force_never_removes_the_current_folder(
    archive: Path, workdir: Path, target: str
) -> None:
    before = snapshot(workdir.parent)
    result = run_cli("unpack", str(archive), target, "--force", cwd=workdir)
    refused(result, "current folder", "refusing")
    assert snapshot(workdir.parent) == before


def test_unpack_force_never_removes_the_archive(tmp_path: Path, archive: Path) -> None:
    holder = fake_bundle(tmp_path / "holder", {"a.txt": b"a"})
    inside = holder / "bundle.tar.gz"
    archive.rename(inside)
    before = snapshot(holder)
    refused(run_cli("unpack", str(inside), str(holder), "--force"), "bundle.tar.gz", "refusing")
    with pytest.raises(BadInputError, match="contains"):
        unpack(inside, tmp_path, force=True)
    assert snapshot(holder) == before


def test_unpack_force_replaces_only_a_bundle(tmp_path: Path, archive: Path) -> None:
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    refused(run_cli("unpack", str(archive), str(other), "--force"), "not an edgeport bundle")
    assert snapshot(other) == {"cat.jpg": b"\xff\xd8"}

    old = fake_bundle(tmp_path / "old", {"stale.txt": b"old"})
    refused(run_cli("unpack", str(archive), str(old)), "already exists", "--force")
    assert (old / "stale.txt").is_file()
    assert run_cli("unpack", str(archive), str(old), "--force").returncode == 0
    assert not (old / "stale.txt").exists() and (old / "sub" / "vocab.txt").is_file()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_unpack_fills_an_existing_empty_folder(tmp_path: Path, archive: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (unpack(archive, empty) / MANIFEST).is_file()


def test_unpack_into_a_path_under_a_file_is_refused(tmp_path: Path, archive: Path) -> None:
    (tmp_path / "afile").write_text("x")
    refused(run_cli("unpack", str(archive), str(tmp_path / "afile" / "sub")), "not a folder")
    assert (tmp_path / "afile").read_text() == "x"


def test_unpack_creates_missing_parents_and_removes_them_on_failure(
    tmp_path: Path, archive: Path
) -> None:
    assert (unpack(archive, tmp_path / "a" / "b" / "c") / MANIFEST).is_file()
    # A wrong sha256 is found while extracting, after the parents were made.
    tampered = {**FILES, "run.py": b"print('HELLO')\n"}
    entries = bundle_entries(tampered, manifest=manifest_for(FILES))
    damaged = write_archive(tmp_path / "tampered.tar.gz", entries)
    with pytest.raises(VerificationError):
        unpack(damaged, tmp_path / "x" / "y")
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- check_destination


def test_check_destination_accepts_new_paths_and_creates_nothing(tmp_path: Path) -> None:
    check_destination(tmp_path / "a" / "b" / "bundle", force=False)
    assert list(tmp_path.iterdir()) == []


def test_check_destination_refuses_existing_and_foreign_folders(tmp_path: Path) -> None:
    bundle = fake_bundle(tmp_path / "bundle", {"a.txt": b"a"})
    with pytest.raises(BadInputError, match="already exists; pass --force"):
        check_destination(bundle, force=False)
    check_destination(bundle, force=True)
    (tmp_path / "empty").mkdir()
    check_destination(tmp_path / "empty", force=True)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / MANIFEST).write_text(json.dumps({"created_by": "someone else"}))
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "link").symlink_to(bundle)
    for path, problem in [
        (foreign, "not an edgeport bundle"),
        (tmp_path / "file.txt", "not a folder"),
        (tmp_path / "link", "is a link"),
    ]:
        with pytest.raises(BadInputError, match=problem) as caught:
            check_destination(path, force=True)
        assert caught.value.exit_code == 2 and "\n" not in str(caught.value)
    assert (foreign / MANIFEST).is_file() and (tmp_path / "file.txt").is_file()


def test_check_destination_guards_the_current_folder_and_protected_paths(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir / "src")
    for out in (Path(), Path(".."), workdir, tmp_path):
        with pytest.raises(BadInputError, match="current folder"):
            check_destination(out, force=True)
    model = tmp_path / "models" / "bert"
    model.mkdir(parents=True)
    with pytest.raises(BadInputError, match=r"is .*models/bert"):
        check_destination(model, force=True, protected=[model])
    with pytest.raises(BadInputError, match=r"contains .*models/bert"):
        check_destination(tmp_path / "models", force=True, protected=[model])
    check_destination(model / "bundle", force=False, protected=[model])  # inside: allowed


def test_check_destination_refuses_a_file_in_the_parent_path(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile" / "sub", tmp_path / "afile" / "deeper" / "sub"):
        with pytest.raises(BadInputError, match="is a file, not a folder"):
            check_destination(out, force=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a read-only folder")
def test_check_destination_refuses_a_read_only_parent(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(BadInputError, match="cannot write"):
            check_destination(locked / "new" / "bundle", force=False)
    finally:
        locked.chmod(0o755)


def test_check_destination_refuses_an_unwritable_parent_even_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[Path] = []

    def read_only(path: Path, mode: int) -> bool:
        asked.append(Path(path))
        return False

    monkeypatch.setattr(os, "access", read_only)
    with pytest.raises(BadInputError, match="cannot write in"):
        check_destination(tmp_path / "new" / "bundle", force=False)
    assert asked == [tmp_path]  # the nearest folder that exists


def test_long_paths_are_shortened_in_messages(tmp_path: Path) -> None:
    out = tmp_path / ("x" * 200) / "line\nbreak"
    out.mkdir(parents=True)
    (out / "f").write_text("x")
    with pytest.raises(BadInputError) as caught:
        check_destination(out, force=True)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 250


def test_convert_force_into_the_current_folder_is_refused_before_any_work(
    workdir: Path,
) -> None:
    before = snapshot(workdir)
    result = run_cli(
        "convert",
        "no-such-model",
        "--profile",
        "x86-64-avx512-vnni",
        "--out",
        ".",
        "--force",
        cwd=workdir,
    )
    refused(result, "current folder")
    assert snapshot(workdir) == before


# --------------------------------------------------------------------------- BundleWriter


def test_writer_force_does_not_replace_a_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with (
        pytest.raises(BadInputError, match="not an edgeport bundle"),
        BundleWriter(out, force=True) as writer,
    ):
        writer.write_text("model.onnx", "weights")
        writer.commit()
    assert snapshot(tmp_path) == {"out": None, "out/thesis.tex": b"years of work"}


def test_writer_creates_parents_only_to_write_and_removes_them_on_failure(
    tmp_path: Path,
) -> None:
    out = tmp_path / "a" / "b" / "bundle"
    with pytest.raises(RuntimeError), BundleWriter(out, force=False) as writer:
        writer.write_text("model.onnx", "half")
        raise RuntimeError("conversion crashed")
    assert list(tmp_path.iterdir()) == []


def test_committed_bundle_folders_are_readable_by_others(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    bundle_module.process_umask.cache_clear()
    try:
        with BundleWriter(tmp_path / "bundle", force=False) as writer:
            writer.write_text("sub/vocab.txt", "a\n")
            committed = writer.commit()
    finally:
        os.umask(previous)
        bundle_module.process_umask.cache_clear()
    assert stat.S_IMODE(committed.stat().st_mode) == 0o755
    assert stat.S_IMODE((committed / "sub").stat().st_mode) == 0o755
