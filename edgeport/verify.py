"""`edgeport verify`: run a bundle's own checks from the host.

The checking code lives once, in the template that every bundle carries as verify.py
(edgeport/runners/verify_bundle.py, which needs only numpy and the runtime). The host
runs the package's copy of it, not the bundle's, so a tampered verify.py cannot vouch
for itself. An archive is unpacked (safely) into a temporary folder first.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgeport.errors import BadInputError
from edgeport.runners import verify_bundle

VERIFY_SCRIPT = "verify.py"
VERIFY_TEMPLATE = "verify_bundle.py"


def check_bundle_files(bundle: Path) -> list[str]:
    """Integrity only (no runtime needed): one line per changed, missing or extra file."""
    try:
        manifest = verify_bundle.load_manifest(bundle)
    except verify_bundle.BundleError as exc:
        raise BadInputError(str(exc)) from exc
    failures: list[str] = verify_bundle.check_files(bundle, manifest)["failures"]
    return failures


def verify(
    path: Path, *, runs: int = verify_bundle.DEFAULT_RUNS, threads: int | None = None
) -> dict[str, Any]:
    """Every check of the bundle folder or archive at `path`; `exit_code` says how it ended."""
    if not path.exists():
        raise BadInputError(f"bundle not found: {path}")
    if path.is_dir():
        return verify_bundle.verify(path, runs=runs, threads=threads)
    from edgeport.archive import unpack

    with tempfile.TemporaryDirectory(prefix="edgeport-verify-") as tmp:
        bundle = unpack(path, Path(tmp) / "bundle")
        result = verify_bundle.verify(bundle, runs=runs, threads=threads)
    result["bundle"] = str(path)
    return result


def summary_line(result: dict[str, Any]) -> str:
    return verify_bundle.summary_line(result)
