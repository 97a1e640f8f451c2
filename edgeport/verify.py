"""`edgeport verify`: run a bundle's own checks from the host.

The checking code lives once, in the template that every bundle carries as verify.py
(edgeport/runners/verify_bundle.py, which needs only numpy and the runtime). The host
runs the package's copy of it, not the bundle's, so a tampered verify.py cannot vouch
for itself. An archive goes through `edgeport.archive.unpack` into a temporary folder
first: a hostile archive (bomb, escaping names, files manifest.json does not list with
their size) is refused before anything is extracted, and a file whose content does not
match its sha256 in manifest.json fails verification (exit 3) like a tampered folder.
The result lists the device runs kept beside the bundle (`edgeport verify --on`,
edgeport/device.py), each marked `current` when it ran the content checked here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgeport.errors import BadInputError, VerificationError
from edgeport.runners import verify_bundle

VERIFY_SCRIPT = "verify.py"
VERIFY_TEMPLATE = "verify_bundle.py"


def verify(
    path: Path, *, runs: int = verify_bundle.DEFAULT_RUNS, threads: int | None = None
) -> dict[str, Any]:
    """Every check of the bundle folder or archive at `path`; `exit_code` says how it ended."""
    if not path.exists():
        raise BadInputError(f"bundle not found: {path}")
    if path.is_dir():
        result = verify_bundle.verify(path, runs=runs, threads=threads)
    else:
        from edgeport.archive import unpack

        with tempfile.TemporaryDirectory(prefix="edgeport-verify-") as tmp:
            try:
                bundle = unpack(path, Path(tmp) / "bundle")
            except VerificationError as exc:
                return _failed_unpack(path, exc)
            result = verify_bundle.verify(bundle, runs=runs, threads=threads)
        result["bundle"] = str(path)
    return _with_device_runs(path, result)


def _with_device_runs(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """The device runs kept beside the bundle (`verify --on`), each marked `current` when
    it ran the content checked here."""
    from edgeport.device import kept_device_runs

    content = (result.get("manifest") or {}).get("content_sha256")
    result["device_runs"] = kept_device_runs(path, content if result["passed"] else None)
    return result


def _failed_unpack(archive: Path, exc: VerificationError) -> dict[str, Any]:
    """The result of an archive whose files do not match manifest.json (nothing unpacked)."""
    return {
        "bundle": str(archive),
        "passed": False,
        "exit_code": exc.exit_code,
        "files": None,
        "golden": {"skipped": "the archive's files do not match manifest.json"},
        "latency": None,
        "runtime": None,
        "failures": [str(exc)],
    }


def summary_line(result: dict[str, Any]) -> str:
    return verify_bundle.summary_line(result)
