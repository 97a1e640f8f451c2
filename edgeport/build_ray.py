"""`edgeport build FILE --ray`: the pairs of a build as tasks on a Ray cluster.

Each pair is one Ray task running edgeport.build.build_pair, the function a local build
calls for it, so its bundle, archive and index record are the ones a local build writes;
the driver gathers the records as tasks finish (`ray.wait`) and writes index.json with
the pairs in file order. Each task asks Ray for what its conversion needs, from the
pair's plan (planned here, before submitting: metadata only, as `edgeport plan`):

- CPUs: the profile's cores, at most the largest node's CPUs. The conversion measures
  candidates with that many threads (min(profile cores, the node's cores)), and Ray
  gives torch as many (OMP_NUM_THREADS), so pairs sharing a node do not share cores.
- memory: the Python process with torch and the runtimes imported, the PyTorch
  reference model and its fp32 export (the fp32 weights each), and the biggest
  candidate's session as the plan estimates it on the device (its weights, activations
  and runtime). At most the largest node's memory, so a pair is never unschedulable; Ray
  uses the number to place tasks, it does not enforce it.

Workers must see the same paths as the driver: the build runs in the driver's working
folder (relative paths mean the same), and `out`, the export cache (default
out/.export-cache, removed when the build ends), model folders, profile files and the
samples file must be on storage every node shares; the catalogue travels with the tasks.
A task that raises past build_pair, or whose worker dies (killed, out of memory, its
node lost), becomes that pair's record with exit code 1; a dead worker's task is retried
once first (MAX_RETRIES), replacing the bundle the dead worker may have written. The
other pairs' bundles are kept either way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeport.errors import BadInputError, EdgeportError, UnsupportedError

if TYPE_CHECKING:
    from edgeport.build import BuildFile, DeviceInventory, ModelEntry
    from edgeport.catalog import Catalog
    from edgeport.progress import Progress
    from edgeport.schemas import Plan

MIB = 1024 * 1024
# Memory of a conversion apart from the model: Python with torch, transformers, optimum
# and ONNX Runtime imported (~300 MB; a 2-layer tiny BERT's conversion peaks at ~500 MB),
# the fresh process that measures latency, allocators and the export's buffers.
PROCESS_BASE_MB = 1024.0
# A task whose worker died is run once more (a node lost or a transient kill); a
# conversion that kills its worker twice is reported. Exceptions are never retried:
# build_pair turns the pair's own failures into its record.
MAX_RETRIES = 1


@dataclass(frozen=True)
class RayCluster:
    """Where `--ray` runs: None is ray.init()'s default (the cluster in RAY_ADDRESS, else
    the latest one started on this machine, else a new local one); `auto`, host:port or
    ray://host:port as Ray documents them. A Ray session already open in this process
    (ray.init by the caller) is used as it is, and left open."""

    address: str | None = None

    def check(self, build: BuildFile, devices: DeviceInventory | None) -> None:
        """What a local build allows and a Ray build cannot do faithfully; BadInputError."""
        from edgeport.catalog import HOST_PROFILE_ID

        if HOST_PROFILE_ID in build.profiles:
            number = build.profiles.index(HOST_PROFILE_ID)
            raise BadInputError(
                f"profiles.{number}: `host` would be whichever Ray node runs the pair; give its "
                "profile file instead (`edgeport profiles detect > node.yaml` on a node)"
            )
        if devices is not None:
            raise BadInputError(
                "--devices with --ray: pairs running side by side would measure on the same "
                "devices at once; build with --ray, then `edgeport verify ARCHIVE --on ...`, "
                "or build without --ray"
            )

    def run(
        self,
        build: BuildFile,
        numbered: Sequence[tuple[int, ModelEntry, str]],
        total: int,
        *,
        catalog: Catalog,
        export_cache: Path,
        force: bool,
        convert: Callable[..., Any] | None,
        progress: Progress,
    ) -> list[dict[str, Any]]:
        """The records of the `numbered` pairs (number in the file, model, profile), in that
        order, each built by one Ray task."""
        try:
            import ray
        except ModuleNotFoundError as exc:
            from edgeport.dependencies import install_hint

            raise UnsupportedError(f"--ray {install_hint(exc.name or 'ray')}") from exc

        from edgeport.build import bundle_folder

        started = not ray.is_initialized()
        if started:
            _init(ray, self)
        pending: dict[Any, tuple[int, ModelEntry, str]] = {}
        try:
            nodes = _nodes(ray)
            task = ray.remote(_pair_task)
            catalog_ref = ray.put(catalog)
            cwd = str(Path.cwd())
            for number, model, profile in numbered:
                resources = pair_resources(build, model, profile, catalog, nodes)
                # A worker that dies after writing the pair's bundle leaves it behind, and
                # its retry would refuse it as an existing destination. A folder absent now
                # can only be this task's own: its retry may replace it.
                replace = force or not bundle_folder(build, model, profile).exists()
                ref = task.options(
                    num_cpus=resources.num_cpus,
                    memory=int(resources.memory_mb * MIB),
                    max_retries=MAX_RETRIES,
                    retry_exceptions=False,
                    name=f"edgeport-build:{model.bundle_prefix}-{Path(profile).stem}",
                ).remote(cwd, build, model, profile, catalog_ref, export_cache, replace, convert)
                pending[ref] = (number, model, profile)
                progress.stage(
                    f"[pair {number}/{total}] {model.id} on {profile}: "
                    f"Ray task ({resources.describe()})"
                )
            return _gather(ray, pending, progress, [number for number, _, _ in numbered])
        except BaseException:
            for ref in pending:  # an interrupted build leaves no conversions behind
                ray.cancel(ref, force=True)
            raise
        finally:
            if started:
                ray.shutdown()


@dataclass(frozen=True)
class Resources:
    num_cpus: int
    memory_mb: float
    note: str = ""

    def describe(self) -> str:
        cpus = f"{self.num_cpus} CPU" + ("s" if self.num_cpus != 1 else "")
        return f"{cpus}, {self.memory_mb:,.0f} MB" + (f"; {self.note}" if self.note else "")


def conversion_memory_mb(plan: Plan) -> float:
    """The memory a conversion of `plan`'s model needs on the build host, in MiB."""
    fp32_weights = plan.model.parameter_count * 4 / MIB
    biggest = max((c.estimated_memory_mb for c in plan.candidates), default=0.0)
    return PROCESS_BASE_MB + 2 * fp32_weights + biggest


def pair_resources(
    build: BuildFile,
    model: ModelEntry,
    profile: str,
    catalog: Catalog,
    nodes: Sequence[tuple[float, float]],
) -> Resources:
    """What one pair's task asks for, on a cluster of `nodes` (CPUs, memory in MiB each).

    A pair whose plan fails here (a model that cannot be resolved, an empty plan) asks for
    one CPU and the process's base memory: its task fails as a local build's pair does,
    with the same record.
    """
    from edgeport.pipeline import ConvertRequest, make_plan
    from edgeport.progress import SilentProgress

    request = ConvertRequest(
        model=model.id,
        profile=profile,
        revision=model.revision,
        task=model.task,
        recipes=frozenset(model.recipes) if model.recipes else None,
        objective=build.objective,
        max_size_mb=build.max_size_mb,
        catalog=catalog,
    )
    try:
        plan = make_plan(request, SilentProgress())
    except EdgeportError:
        plan = None
    if plan is None or not plan.candidates:
        num_cpus, wanted, note = 1, PROCESS_BASE_MB, "no plan here"
    else:
        largest_cpus = max((cpus for cpus, _ in nodes), default=1.0)
        num_cpus = max(1, min(plan.profile.cpu.cores, int(largest_cpus)))
        wanted, note = conversion_memory_mb(plan), ""
    room = max((memory for cpus, memory in nodes if cpus >= num_cpus), default=wanted)
    if wanted > room:
        whole = f"needs ~{wanted:,.0f} MB: a whole node"
        return Resources(num_cpus, room, f"{note}; {whole}" if note else whole)
    return Resources(num_cpus, wanted, note)


def _pair_task(
    cwd: str,
    build: BuildFile,
    model: ModelEntry,
    profile: str,
    catalog: Catalog,
    export_cache: Path,
    force: bool,
    convert: Callable[..., Any] | None,
) -> dict[str, Any]:
    """One pair, on a Ray worker: build_pair in the driver's working folder."""
    from edgeport.build import build_pair, pair_record

    previous = Path.cwd()
    try:
        os.chdir(cwd)
    except OSError as exc:
        record = pair_record(model, profile)
        record["exit_code"] = 1
        record["error"] = (
            f"the build's working folder {cwd} is not on this Ray node ({exc.strerror}): "
            "workers need the driver's paths on shared storage"
        )
        return record
    try:
        return build_pair(
            build,
            model,
            profile,
            catalog=catalog,
            export_cache=export_cache,
            force=force,
            convert=convert,
        )
    finally:
        os.chdir(previous)


def _ray_failure(ray: Any, model: ModelEntry, profile: str, exc: Exception) -> dict[str, Any]:
    from edgeport.build import pair_record

    record = pair_record(model, profile)
    record["exit_code"] = 1
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    crashed = (
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.NodeDiedError,
        ray.exceptions.OutOfMemoryError,
        ray.exceptions.ObjectLostError,
    )
    what = (
        f"the Ray worker running this pair died (tried {MAX_RETRIES + 1} times)"
        if isinstance(exc, crashed)
        else "the Ray task failed"
    )
    detail = lines[-1] if isinstance(exc, ray.exceptions.RayTaskError) and lines else ""
    detail = detail or (lines[0] if lines else "")
    record["error"] = f"{what}: {type(exc).__name__}" + (f": {detail[:300]}" if detail else "")
    return record


def _nodes(ray: Any) -> list[tuple[float, float]]:
    return [
        (float(node["Resources"].get("CPU", 0)), float(node["Resources"].get("memory", 0)) / MIB)
        for node in ray.nodes()
        if node.get("Alive")
    ]


def _init(ray: Any, cluster: RayCluster) -> None:
    try:
        # Workers' output stays in Ray's session logs: stdout is --json's.
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = cluster.address or os.environ.get("RAY_ADDRESS") or "a local Ray instance"
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise EdgeportError(f"--ray: cannot start or reach {where}: {first.strip()}") from exc


def _gather(
    ray: Any,
    pending: dict[Any, tuple[int, ModelEntry, str]],
    progress: Progress,
    order: list[int],
) -> list[dict[str, Any]]:
    from edgeport.build import pair_line

    records: dict[int, dict[str, Any]] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            number, model, profile = pending.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.RayError as exc:
                record = _ray_failure(ray, model, profile, exc)
            records[number] = record
            progress.info(pair_line(record))
    return [records[number] for number in order]
