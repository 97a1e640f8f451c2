from __future__ import annotations

from pathlib import Path

import pytest

from edgeport.bundle import BundleWriter
from edgeport.errors import SecurityError


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
    with BundleWriter(out, force=True) as writer:
        writer.write_text("new.txt", "new")
        writer.commit()
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_file_names_cannot_escape_the_bundle(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "bundle", force=False) as writer, pytest.raises(SecurityError):
        writer.write_text("../../etc/evil", "x")
