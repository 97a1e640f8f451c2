"""What two conversions of the same model share, and what legitimately differs.

`content_sha256` in the manifest's reproducibility note covers every file except the
volatile ones, and the manifest itself less its timings (`manifest_sha256`): equal values
mean the same model, tokenizer, golden data, runtime settings and thresholds. Compare it
across conversions (and across machines with the same library versions).

The volatile files and fields are listed once, in edgeport/runners/ondevice.py, which
every bundle carries as verify.py: the verifier recomputes both digests from its own copy
of that list, never from the one the manifest describes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from edgeport.bundle import MANIFEST
from edgeport.runners.ondevice import (
    DEVICE_RUNS,
    VOLATILE_FIELDS,
    VOLATILE_FILES,
    manifest_digest,
)
from edgeport.runners.ondevice import content_digest as _content_digest
from edgeport.schemas import FileEntry, Manifest, Reproducibility, VolatileFile

# Why each volatile file differs between two conversions; one entry per VOLATILE_FILES.
_VOLATILE_WHY = {
    "report.md": "its tables print the same timings",
    "tradeoff.svg": "the plot is drawn from the same latency measurements",
}
VOLATILE = (
    VolatileFile(
        path=MANIFEST,
        fields=[*VOLATILE_FIELDS, *(f"files[{path}]" for path in VOLATILE_FILES)],
        why="latency, memory, decoding speed and duration measured on the build host vary "
        "run to run, and with them the search's record (attempts: which candidates were "
        "timed, confirmed or skipped, and why); the entries of the volatile files change too",
    ),
    *(VolatileFile(path=path, why=_VOLATILE_WHY[path]) for path in VOLATILE_FILES),
    VolatileFile(
        path=f"{DEVICE_RUNS}/",
        why="device runs (`edgeport verify --on`) are added beside the bundle after "
        "conversion: not listed in files, not hashed, not packed into archives",
    ),
)
REPRODUCIBILITY_NOTES = (
    "ONNX export (optimum, torch.onnx) was checked deterministic: converting the same model "
    "at the same commit with the same recipe and library versions twice gives the same "
    "model.onnx sha256",
    "golden.npz holds PyTorch outputs computed on the build host: bit-identical with the same "
    "host and library versions; another CPU or torch build may differ in the last bits",
    "versions, profile 'host' (probed) and validation metrics depend on the build environment, "
    "not on the run",
    "with the latency objective, which candidates are pruned and which one ships depend on "
    "the measured timings, so two conversions may differ in their attempts or model",
    "content_sha256 covers every file except the volatile ones and manifest_sha256 (the "
    "manifest less this section and its volatile fields); compare it across conversions",
    "verify.py recomputes both digests: they detect edits, not forgery; to trust a bundle "
    "from elsewhere, compare its content_sha256 with the one its builder published",
)


def content_digest(
    entries: Iterable[FileEntry], volatile: Iterable[str], manifest_sha256: str
) -> str:
    """sha256 over the stable files' `path sha256` lines and the manifest digest's line."""
    return _content_digest(
        [entry.model_dump(mode="json") for entry in entries], manifest_sha256, volatile
    )


def reproducibility(entries: Sequence[FileEntry], manifest_sha256: str) -> Reproducibility:
    volatile_paths = {v.path for v in VOLATILE}
    return Reproducibility(
        content_sha256=content_digest(entries, volatile_paths, manifest_sha256),
        manifest_sha256=manifest_sha256,
        stable_files=sorted(e.path for e in entries if e.path not in volatile_paths),
        volatile=list(VOLATILE),
        notes=list(REPRODUCIBILITY_NOTES),
    )


def with_reproducibility(manifest: Manifest) -> Manifest:
    """`manifest` with its reproducibility note computed over everything else in it.

    The digest is taken over the JSON as written and read back (BundleWriter.write_manifest
    dumps `model_dump(mode="json")`), which is what the verifier hashes on the device.
    """
    written = json.loads(json.dumps(manifest.model_dump(mode="json", exclude={"reproducibility"})))
    note = reproducibility(manifest.files, manifest_digest(written))
    return manifest.model_copy(update={"reproducibility": note})
