"""content_sha256 means "the same bundle": two conversions of one model agree on it, and it
changes with anything in the manifest that changes what the bundle does."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from bundle_fixtures import PROFILE

from edgeport.bundle import MANIFEST, REPORT, TRADEOFF_IMAGE
from edgeport.pipeline import ConvertRequest, convert
from edgeport.reproducibility import VOLATILE, content_digest, with_reproducibility
from edgeport.runners import ondevice
from edgeport.schemas import FileEntry, Manifest
from edgeport.verify import verify


def test_volatile_list_is_the_verifiers() -> None:
    assert set(ondevice.VOLATILE_FILES) == {REPORT, TRADEOFF_IMAGE}
    described = {v.path: v for v in VOLATILE}
    assert set(described) == {
        MANIFEST,
        *ondevice.VOLATILE_FILES,
        f"{ondevice.DEVICE_RUNS}/",
    }
    assert all(v.why for v in VOLATILE)
    assert described[MANIFEST].fields == [
        *ondevice.VOLATILE_FIELDS,
        *(f"files[{path}]" for path in ondevice.VOLATILE_FILES),
    ]


@pytest.fixture(scope="module")
def twice(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same model converted twice, with two recipes so that there is a trade-off plot.

    The size objective picks the winner by model bytes: the latency objective would pick
    by measured timings, which may legitimately ship a different recipe each time.
    """
    root = tmp_path_factory.mktemp("twice")
    bundles = []
    for name in ("first", "second"):
        request = ConvertRequest(
            model=str(tiny_bert),
            profile=PROFILE,
            out=root / name,
            recipes=frozenset({"onnx-fp32", "onnx-int8-dynamic"}),
            objective="size",
        )
        with warnings.catch_warnings():  # torch's tracer warns during export, in-process here
            warnings.simplefilter("ignore")
            result = convert(request)
        assert result.bundle is not None, result.verdict
        bundles.append(result.bundle)
    return bundles[0], bundles[1]


def test_two_conversions_give_the_same_content_sha256(twice: tuple[Path, Path]) -> None:
    first, second = twice
    assert (first / TRADEOFF_IMAGE).is_file()  # the volatile plot is there to be skipped
    names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(second).as_posix() for p in second.rglob("*"))
    for name in names:
        if name not in {MANIFEST, *ondevice.VOLATILE_FILES}:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
    manifests = [json.loads((b / MANIFEST).read_text(encoding="utf-8")) for b in twice]
    # Compared as data first, so that a failure names the differing field.
    assert ondevice.stable_manifest(manifests[0]) == ondevice.stable_manifest(manifests[1])
    notes = [m["reproducibility"] for m in manifests]
    assert notes[0]["manifest_sha256"] == notes[1]["manifest_sha256"]
    assert notes[0]["content_sha256"] == notes[1]["content_sha256"]
    assert TRADEOFF_IMAGE not in notes[0]["stable_files"]
    for bundle in twice:
        result = verify(bundle, runs=0)
        assert result["passed"], result["failures"]


def test_note_is_computed_over_the_manifest_as_written(twice: tuple[Path, Path]) -> None:
    """Awkward floats survive model_dump -> json.dumps -> json.loads: the digest matches."""
    written = json.loads((twice[0] / MANIFEST).read_text(encoding="utf-8"))
    manifest = Manifest.model_validate(written)
    metrics = {**manifest.metrics, "odd": 0.1 + 0.2, "tiny": 1e-7, "huge": 1.5e300}
    sealed = with_reproducibility(manifest.model_copy(update={"metrics": metrics}))
    assert sealed.reproducibility is not None
    text = json.dumps(sealed.model_dump(mode="json"), indent=2)  # as BundleWriter writes it
    assert ondevice.manifest_digest(json.loads(text)) == sealed.reproducibility.manifest_sha256
    assert ondevice.check_manifest(json.loads(text))["failures"] == []

    note = written["reproducibility"]
    entries = [FileEntry(**entry) for entry in written["files"]]
    volatile = {v["path"] for v in note["volatile"]}
    assert note["content_sha256"] == content_digest(entries, volatile, note["manifest_sha256"])
    assert {REPORT, TRADEOFF_IMAGE} <= volatile and "model.onnx" in note["stable_files"]


def _sealed(manifest: dict[str, object]) -> dict[str, object]:
    """`manifest` with the digests recorded as its own format's edgeport records them."""
    digest = ondevice.manifest_digest(manifest)
    content = ondevice.content_digest(manifest["files"], digest)  # type: ignore[arg-type]
    return {**manifest, "reproducibility": {"manifest_sha256": digest, "content_sha256": content}}


def test_bundles_of_the_first_manifest_format_still_verify(twice: tuple[Path, Path]) -> None:
    """Format 1 hashed the search record (attempts) less its timings; a bundle written then
    must not read as tampered with now that attempts are volatile as a whole."""
    manifest = json.loads((twice[0] / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["format_version"] == 2
    assert ondevice.check_manifest(manifest)["failures"] == []

    old = _sealed({**manifest, "format_version": 1})  # as edgeport wrote format 1
    assert ondevice.check_manifest(old)["failures"] == []
    # Its attempts are still protected as they were then...
    edited = json.loads(json.dumps(old))
    edited["attempts"][0]["detail"] += " (edited)"
    assert ondevice.check_manifest(edited)["failures"]
    # ...and a current manifest cannot claim the old format to change what is hashed.
    assert ondevice.check_manifest({**manifest, "format_version": 1})["failures"]
