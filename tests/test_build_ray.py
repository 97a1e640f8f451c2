"""`edgeport build --ray`: pairs as Ray tasks on a local cluster (two CPUs), compared with a
local build; a failing pair and a dead worker are that pair's record only."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli
from fake_backend import RecordingProgress
from test_build import PROFILES, assert_same_bundles, tiny_two_profiles

from edgeport.build import BuildFile, DeviceInventory, ModelEntry, build_exit_code, run_build
from edgeport.build_ray import PROCESS_BASE_MB, RayCluster, Resources, pair_resources
from edgeport.catalog import load_catalog
from edgeport.errors import BadInputError, UnsupportedError

INSTALL = 'pip install -c constraints.txt -e ".[ray]"'


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray", reason=INSTALL)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        yield
    finally:
        ray.shutdown()


def _quietly(build: BuildFile, **options: Any) -> tuple[list[dict[str, Any]], Path]:
    with warnings.catch_warnings():  # torch's tracer warns during export, in-process here
        warnings.simplefilter("ignore")
        return run_build(build, **options)


def test_a_ray_build_ships_the_local_build_bundles(
    ray_cluster: None, tiny_bert: Path, tmp_path: Path
) -> None:
    import os

    from edgeport.pipeline import convert as pipeline_convert

    seen = tmp_path / "seen"
    seen.mkdir()

    def noting_the_cache(request: Any, progress: Any) -> Any:
        """Which process converts, and how many exports the cache held when it began."""
        entries = len(list(request.export_cache.glob("*/export.json")))
        (seen / Path(request.profile).stem).write_text(f"{os.getpid()} {entries}")
        return pipeline_convert(request, progress)

    local, _ = _quietly(tiny_two_profiles(tiny_bert, tmp_path / "local"))
    progress = RecordingProgress()
    build = tiny_two_profiles(tiny_bert, tmp_path / "ray")
    records, index = _quietly(build, ray=RayCluster(), progress=progress, convert=noting_the_cache)
    assert [r["exit_code"] for r in records] == [0, 0], records
    # Ray workers converted, one after the other (each asked for both CPUs), and the second
    # reused the first one's export from the shared cache.
    notes = [path.read_text().split() for path in seen.iterdir()]
    assert len(notes) == 2 and all(int(pid) != os.getpid() for pid, _ in notes)
    assert sorted(int(entries) for _, entries in notes) == [0, 1]
    assert index == build.out / "index.json"
    assert json.loads(index.read_text()) == {"format_version": 1, "pairs": records}
    assert_same_bundles(local, records)
    assert not (build.out / ".export-cache").exists()  # this build's exports, then gone
    # Each task asked for the profile's 4 cores (at most the node's 2) and its plan's memory.
    asked = [line for line in progress.lines if "Ray task" in line]
    assert asked[0].startswith(f"[pair 1/2] {tiny_bert} on x86-64-avx2: Ray task (2 CPUs, 1,0"), (
        asked
    )
    assert sum(line.endswith(": passed") for line in progress.lines) == 2


def test_a_failed_pair_and_a_dead_worker_lose_no_other_bundle(
    ray_cluster: None, tiny_bert: Path, tmp_path: Path
) -> None:
    import os

    from edgeport.pipeline import convert as pipeline_convert

    def dies_on_the_pi(request: Any, progress: Any) -> Any:
        """Defined here, so Ray pickles it by value for its workers."""
        if request.profile == "raspberry-pi-5":
            os._exit(3)  # the worker process dies, as when the kernel kills it
        return pipeline_convert(request, progress)

    tiny_board = tmp_path / "tiny-board.yaml"  # a valid profile the model cannot fit
    board = yaml.safe_load(PROFILES["x86-64-avx2"].read_text())
    tiny_board.write_text(yaml.safe_dump({**board, "id": "tiny-board", "memory_mb": 1}))
    build = BuildFile(
        models=[ModelEntry(id=str(tiny_bert), recipes=["onnx-fp32"], name="tiny")],
        profiles=["raspberry-pi-5", str(tiny_board), "x86-64-avx2"],
        out=tmp_path / "out",
    )
    records, index = _quietly(build, ray=RayCluster(), convert=dies_on_the_pi)
    dead, unfit, good = records
    assert dead["exit_code"] == 1 and dead["bundle"] is None
    assert dead["error"].startswith(
        "the Ray worker running this pair died (tried 2 times): WorkerCrashedError"
    ), dead["error"]
    assert unfit["exit_code"] == 5 and "nothing fits tiny-board" in unfit["error"]
    assert good["exit_code"] == 0 and good["verify"] == "passed"
    assert Path(good["archive"]).is_file() and Path(good["bundle"]).is_dir()
    assert build_exit_code(records) == 1
    assert json.loads(index.read_text())["pairs"] == records


def test_a_worker_that_dies_after_writing_its_bundle_is_retried_without_force(
    ray_cluster: None, tiny_bert: Path, tmp_path: Path
) -> None:
    """The retry finds the dead worker's complete bundle; it replaces it rather than
    refusing it as an existing destination."""
    import os

    from edgeport.pipeline import convert as pipeline_convert

    died = tmp_path / "died-once"

    def dies_after_the_bundle(request: Any, progress: Any) -> Any:
        result = pipeline_convert(request, progress)
        if not died.exists():
            died.write_text("")
            os._exit(3)  # killed between writing the bundle and archiving it
        return result

    build = BuildFile(
        models=[ModelEntry(id=str(tiny_bert), recipes=["onnx-fp32"], name="tiny")],
        profiles=["x86-64-avx2"],
        out=tmp_path / "out",
    )
    (record,), _ = _quietly(build, ray=RayCluster(), convert=dies_after_the_bundle)
    assert died.exists()
    assert record["exit_code"] == 0, record
    assert record["verify"] == "passed" and Path(record["archive"]).is_file()


def test_pair_resources_come_from_the_plan(tiny_bert: Path, tmp_path: Path) -> None:
    catalog = load_catalog()
    build = tiny_two_profiles(tiny_bert, tmp_path / "out")
    model = build.models[0]
    big = pair_resources(build, model, "x86-64-avx512-vnni", catalog, [(16.0, 64_000.0)])
    assert big.num_cpus == 8 and PROCESS_BASE_MB < big.memory_mb < PROCESS_BASE_MB + 100
    assert big.note == ""
    # At most what the largest node has, so that every pair can be scheduled.
    small = pair_resources(build, model, "x86-64-avx512-vnni", catalog, [(2.0, 500.0)])
    assert (small.num_cpus, small.memory_mb) == (2, 500.0)
    assert small.describe().startswith("2 CPUs, 500 MB; needs ~1,0")
    assert small.describe().endswith(" MB: a whole node")
    # No plan here (the task will fail as a local build's pair does): one CPU, the base.
    missing = ModelEntry(id=str(tmp_path / "gone"), name="gone")
    nothing = pair_resources(build, missing, "x86-64-avx2", catalog, [(16.0, 64_000.0)])
    assert nothing == Resources(1, PROCESS_BASE_MB, "no plan here")
    tight = pair_resources(build, missing, "x86-64-avx2", catalog, [(1.0, 800.0)])
    assert tight == Resources(1, 800.0, "no plan here; needs ~1,024 MB: a whole node")


def test_what_a_ray_build_refuses(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = tiny_two_profiles(tiny_bert, tmp_path / "out")
    on_host = build.model_copy(update={"profiles": ["x86-64-avx2", "host"]})
    with pytest.raises(BadInputError, match=r"profiles\.1: `host` would be whichever Ray node"):
        run_build(on_host, ray=RayCluster())
    inventory = DeviceInventory(devices={"x86-64-avx2": {"target": "ssh://pi@pi5"}})
    with pytest.raises(BadInputError, match="--devices with --ray"):
        run_build(build, ray=RayCluster(), devices=inventory)
    monkeypatch.setitem(sys.modules, "ray", None)  # as without the extra
    with pytest.raises(UnsupportedError) as caught:
        run_build(build, ray=RayCluster())
    assert caught.value.exit_code == 4
    assert str(caught.value) == (
        '--ray needs `pip install -c constraints.txt "edgeport[ray]"` '
        "(Python module 'ray' is not installed)"
    )
    assert not (tmp_path / "out" / "index.json").exists()


def test_the_ray_options_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "build.yaml"
    path.write_text("models: [{id: a/b}]\nprofiles: [x86-64-avx2, host]\nout: out\n")
    result = run_cli("build", str(path), "--ray-address", "auto")
    assert result.returncode == 2, result.stderr
    assert "profiles.1: `host` would be whichever Ray node runs the pair" in result.stderr
    help_text = run_cli("build", "--help").stdout
    assert "--ray-address" in help_text and "--shard" in help_text and "--merge" in help_text
