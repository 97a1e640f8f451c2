"""A tiny converted bundle shared by test_verify, test_archive and test_build (one conversion).

Each test module declares its own session fixture over `tiny_bundle_once`, which converts
only the first time it is called in the session.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

PROFILE = "x86-64-avx512-vnni"
RECIPE = "onnx-fp32"
_BUNDLES: dict[Path, Path] = {}


def tiny_bundle_once(model: Path, root: Path) -> Path:
    """Convert `model` once per session (fp32, one candidate) and return the bundle folder."""
    if model not in _BUNDLES:
        from conftest import run_cli

        out = root / "tiny-bundle"
        result = run_cli(
            "convert", str(model), "--profile", PROFILE, "--recipe", RECIPE, "--out", str(out)
        )
        assert result.returncode == 0, result.stderr
        _BUNDLES[model] = out
    return _BUNDLES[model]


def copy_bundle(bundle: Path, dest: Path) -> Path:
    """A private copy a test may tamper with."""
    shutil.copytree(bundle, dest)
    return dest


def read_manifest(bundle: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    return manifest


def write_manifest(bundle: Path, manifest: dict[str, Any]) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def reseal(manifest: dict[str, Any]) -> dict[str, Any]:
    """Recompute the manifest's digests after an edit, as anyone editing it on purpose can.

    Tests that change the manifest to reach a later check (golden data, paths) reseal it;
    tests of the digest check itself do not.
    """
    from edgeport.runners.ondevice import content_digest, manifest_digest

    digest = manifest_digest(manifest)
    manifest["reproducibility"]["manifest_sha256"] = digest
    manifest["reproducibility"]["content_sha256"] = content_digest(manifest["files"], digest)
    return manifest
