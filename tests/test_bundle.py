from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeport.bundle import MANIFEST, BundleWriter
from edgeport.errors import BadInputError, SecurityError


def test_failed_bundle_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError), BundleWriter(out, force=False) as writer:
        writer.write_text("model.onnx", "half")
        raise RuntimeError("conversion crashed")
    assert list(tmp_path.iterdir()) == []


def test_commit_replaces_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / MANIFEST).write_text(json.dumps({"created_by": "edgeport", "files": []}))
    with BundleWriter(out, force=True) as writer:
        writer.write_text("new.txt", "new")
        writer.commit()
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_commit_with_force_replaces_only_a_bundle(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "notes.txt").write_text("not a bundle")
    with (
        pytest.raises(BadInputError, match="not an edgeport bundle"),
        BundleWriter(out, force=True) as writer,
    ):
        writer.write_text("new.txt", "new")
        writer.commit()
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_commit_without_force_keeps_a_bundle_written_meanwhile(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with BundleWriter(out, force=False) as writer:
        writer.write_text("new.txt", "new")
        out.mkdir()  # another process got there first
        (out / "theirs.txt").write_text("theirs")
        with pytest.raises(BadInputError, match="already exists"):
            writer.commit()
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_file_names_cannot_escape_the_bundle(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "bundle", force=False) as writer, pytest.raises(SecurityError):
        writer.write_text("../../etc/evil", "x")
