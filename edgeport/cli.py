"""The `edgeport` command: thin functions over library calls.

Human output (progress, tables) goes to stderr; `--json` prints one result object on
stdout. Every expected failure is one line and a distinct exit code (errors.py); the
traceback is shown only with EDGEPORT_DEBUG=1.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeport import __version__
from edgeport.errors import EdgeportError

if TYPE_CHECKING:
    from edgeport.catalog import Catalog
    from edgeport.pipeline import ConvertRequest
    from edgeport.progress import ConsoleProgress
    from edgeport.schemas import ConversionResult, Plan

app = typer.Typer(
    name="edgeport",
    help="Convert Hugging Face models into validated bundles for edge devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
profiles_app = typer.Typer(
    help="Device profiles: list, show, validate, detect, schema, calibrate.", no_args_is_help=True
)
recipes_app = typer.Typer(help="Conversion recipes: list, show.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
app.add_typer(recipes_app, name="recipes")

# Logs in CI are not terminals; rich would wrap them at 80 columns.
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

# Shared option aliases, as in huggingface_hub's CLI.
ModelArg = Annotated[str, typer.Argument(help="Hub model id (org/name) or a local model folder.")]
ProfileOpt = Annotated[
    str, typer.Option("--profile", "-p", help="Profile id, 'host', or a path to a profile YAML.")
]
RevisionOpt = Annotated[str | None, typer.Option(help="Hub branch, tag or commit.")]
TaskOpt = Annotated[str | None, typer.Option(help="Override task inference (optimum task name).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
ProfilesDirOpt = Annotated[
    list[Path] | None, typer.Option("--profiles-dir", help="Extra folder of profile YAML files.")
]
RecipesDirOpt = Annotated[
    list[Path] | None, typer.Option("--recipes-dir", help="Extra folder of recipe YAML files.")
]
CalibrationsDirOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--calibrations-dir",
        help="Extra folder of calibrations (<profile-id>.yaml, from `profiles calibrate`): "
        "speedups measured on a device, used instead of the recipes' estimates.",
    ),
]
TrustOpt = Annotated[bool, typer.Option(help="Allow code from the model repository to run.")]
PickleOpt = Annotated[
    bool, typer.Option(help="Allow pickle (*.bin) weights when no safetensors exist.")
]
ObjectiveOpt = Annotated[
    str | None,
    typer.Option(
        help="What the winner minimises among passing candidates: latency, size, accuracy. "
        "Default: latency for encoders, size for language models (decoding on a device is "
        "bound by memory, which this host's timing of a small model does not show)."
    ),
]


def console_progress() -> ConsoleProgress:
    """Progress on stderr (a live candidate line on a terminal, plain lines in logs)."""
    from edgeport.progress import ConsoleProgress

    return ConsoleProgress(err)


def _catalog(
    profiles_dirs: list[Path] | None,
    recipes_dirs: list[Path] | None = None,
    calibrations_dirs: list[Path] | None = None,
) -> Catalog:
    from edgeport.catalog import load_catalog

    return load_catalog(
        tuple(profiles_dirs or ()),
        tuple(recipes_dirs or ()),
        calibrations_dirs=tuple(calibrations_dirs or ()),
    )


# Set once a command printed its JSON object: an error after it must not print a second one.
_json_emitted = False


def _emit_json(payload: dict[str, Any]) -> None:
    global _json_emitted
    _json_emitted = True
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


MaxSizeOpt = Annotated[
    float | None,
    typer.Option(
        "--max-size",
        metavar="MB",
        help="Hard limit on the shipped model files, in MB (MiB, as reports count): larger "
        "candidates are dropped or not shipped; size-fitting recipes (gguf-fit) fill it.",
    ),
]


def _check_max_size(max_size: float | None) -> float | None:
    if max_size is not None and not max_size > 0:
        raise typer.BadParameter("must be a positive number of MB", param_hint="--max-size")
    return max_size


def _check_objective(objective: str | None) -> Any:
    if objective is not None and objective not in {"latency", "size", "accuracy"}:
        raise typer.BadParameter("must be latency, size or accuracy", param_hint="--objective")
    return objective


@app.command()
def convert(
    model: ModelArg,
    profile: ProfileOpt,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Bundle folder to write.")] = None,
    revision: RevisionOpt = None,
    task: TaskOpt = None,
    samples: Annotated[
        Path | None,
        typer.Option(help="Your own inputs: .txt (one per line) or .jsonl with 'text'."),
    ] = None,
    recipe: Annotated[
        list[str] | None, typer.Option("--recipe", "-r", help="Only consider these recipes.")
    ] = None,
    objective: ObjectiveOpt = None,
    max_size: MaxSizeOpt = None,
    search_budget: Annotated[
        float, typer.Option(help="Seconds to spend evaluating candidates once one has passed.")
    ] = 1200.0,
    accept_degraded: Annotated[
        bool, typer.Option(help="Ship the closest candidate even when none meets its tolerance.")
    ] = False,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
    force: Annotated[bool, typer.Option(help="Replace an existing bundle folder.")] = False,
    json_output: JsonOpt = False,
    profiles_dir: ProfilesDirOpt = None,
    recipes_dir: RecipesDirOpt = None,
    archive: ArchiveOpt = False,
    calibrations_dir: CalibrationsDirOpt = None,
) -> None:
    """Convert MODEL for a device: plan, export, quantise, validate, and write a bundle."""
    from edgeport.pipeline import ConvertRequest
    from edgeport.pipeline import convert as run_convert

    request = ConvertRequest(
        model=model,
        profile=profile,
        out=out,
        revision=revision,
        task=task,
        samples=samples,
        recipes=frozenset(recipe) if recipe else None,
        objective=_check_objective(objective),
        max_size_mb=_check_max_size(max_size),
        search_budget_s=search_budget,
        accept_degraded=accept_degraded,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        force=force,
        catalog=_catalog(profiles_dir, recipes_dir, calibrations_dir),
    )
    with console_progress() as progress:
        result = run_convert(request, progress)
    _print_result(result, request)
    packed = _archive_bundle(result.bundle) if archive and result.bundle else {}
    if json_output:
        _emit_json({**result_json(result), **packed})
    if result.verdict == "failed":
        raise typer.Exit(3)


def result_json(result: ConversionResult) -> dict[str, Any]:
    chosen = result.chosen
    return {
        "bundle": str(result.bundle) if result.bundle else None,
        "report": str(result.report) if result.report else None,
        "verdict": result.verdict,
        "model": result.plan.model.display_name,
        "commit": result.plan.model.commit,
        "profile": result.plan.profile.id,
        "recipe": chosen.recipe_id if chosen else None,
        "variant": chosen.variant if chosen else None,
        "target": chosen.target_id if chosen else None,
        "metrics": {m.name: m.value for m in chosen.validation.metrics}
        if chosen and chosen.validation
        else {},
        "latency_ratio_vs_fp32": chosen.latency_ratio if chosen else None,
        "attempts": [
            {
                "recipe": a.recipe_id,
                "variant": a.variant,
                "target": a.target_id,
                "status": a.status,
                "latency_ratio_vs_fp32": a.latency_ratio,
                "metrics": {m.name: m.value for m in a.validation.metrics} if a.validation else {},
                "detail": a.detail,
            }
            for a in result.attempts
        ],
    }


def _print_result(result: ConversionResult, request: ConvertRequest) -> None:
    from edgeport.report import attempts_table

    err.print()
    for line in attempts_table(result.attempts, result.chosen):
        err.print(line, markup=False)
    err.print()
    if result.verdict == "failed":
        err.print(
            "[bold red]accuracy gate failed[/]: no candidate met its tolerance; "
            f"report: {escape(str(result.report))}"
            " (pass --accept-degraded to ship the closest one anyway)"
        )
    elif result.verdict == "degraded":
        err.print(
            f"[bold yellow]shipped a degraded model[/] to {result.bundle} (--accept-degraded)"
        )
    else:
        err.print(f"[bold green]bundle ready[/]: {result.bundle}")


ArchiveOpt = Annotated[
    bool, typer.Option("--archive", help="Also write BUNDLE.tar.gz, byte-for-byte reproducible.")
]


def _archive_bundle(bundle: Path) -> dict[str, Any]:
    from edgeport.archive import pack

    info = pack(bundle)
    err.print(f"archive: {escape(str(info.path))} (sha256 {info.sha256})")
    return {"archive": str(info.path), "archive_sha256": info.sha256}


@app.command("verify")
def verify_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or .tar.gz archive.")],
    runs: Annotated[int, typer.Option(help="Timed runs for the latency figure (0: skip).")] = 5,
    threads: Annotated[
        int | None, typer.Option(help="Intra-op threads (default: the manifest's).")
    ] = None,
    json_output: JsonOpt = False,
    on: Annotated[
        str | None,
        typer.Option(
            "--on",
            metavar="ssh://[user@]host[:port]",
            help="Run the checks on this device over SSH (your ssh client and ~/.ssh/config) "
            "and keep the device run beside the bundle, in device-runs/.",
        ),
    ] = None,
    python: Annotated[
        str | None,
        typer.Option("--python", help="The device's Python, with --on (default: python3)."),
    ] = None,
    ssh_option: Annotated[
        list[str] | None,
        typer.Option("--ssh-option", help="Passed to ssh as -o OPTION, with --on (repeatable)."),
    ] = None,
) -> None:
    """Check a bundle: every file's sha256, golden outputs under the stored tolerance, latency.

    With --on: on a device over SSH, with its facts and peak memory, kept in device-runs/.
    """
    from edgeport import device

    if on is not None:
        run = device.verify_on_device(
            bundle,
            on,
            python=python or device.DEFAULT_PYTHON,
            runs=runs,
            threads=threads,
            ssh_options=ssh_option or (),
        )
        kept = device.save_device_run(run, bundle)
        err.print(
            f"{device.summary_line(run)}; kept in {kept}",
            markup=False,
            soft_wrap=True,
            style="green" if run["passed"] else "red",
        )
        if json_output:
            _emit_json({**run, "file": str(kept)})
        if not run["passed"]:
            raise typer.Exit(3)
        return
    if python is not None or ssh_option:
        raise typer.BadParameter("only with --on", param_hint="--python/--ssh-option")
    from edgeport.verify import summary_line, verify

    result = verify(bundle, runs=runs, threads=threads)
    line = summary_line(result)
    err.print(line, markup=False, soft_wrap=True, style="green" if result["passed"] else "red")
    for summary in result.get("device_runs") or []:
        err.print(device.kept_summary_line(summary), markup=False, soft_wrap=True)
    if json_output:
        _emit_json(result)
    if result["exit_code"]:
        raise typer.Exit(int(result["exit_code"]))


@app.command("pack")
def pack_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Archive path (default: BUNDLE.tar.gz).")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Write a reproducible .tar.gz of a bundle (checked against its manifest first)."""
    from edgeport.archive import pack

    if not bundle.is_dir():
        raise typer.BadParameter(f"{bundle} is not a folder", param_hint="BUNDLE")
    info = pack(bundle, out)
    err.print(f"archive: {escape(str(info.path))} (sha256 {info.sha256})")
    if json_output:
        _emit_json({"archive": str(info.path), "sha256": info.sha256, "bytes": info.bytes})


@app.command("unpack")
def unpack_command(
    archive: Annotated[Path, typer.Argument(help="Bundle archive (.tar.gz).")],
    dest: Annotated[Path, typer.Argument(help="Folder to create.")],
    force: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Unpack a bundle archive, refusing entries that would escape DEST (links, '..', devices)."""
    from edgeport.archive import unpack

    err.print(f"unpacked to {escape(str(unpack(archive, dest, force=force)))}")


@app.command("build")
def build_command(
    build_file: Annotated[Path, typer.Argument(help="YAML build file: models x profiles.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Override the file's `out` folder.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace existing bundle folders.")] = False,
    json_output: JsonOpt = False,
    profiles_dir: ProfilesDirOpt = None,
    recipes_dir: RecipesDirOpt = None,
    devices: Annotated[
        Path | None,
        typer.Option(
            "--devices",
            help="YAML inventory (devices: {profile-id: ssh://[user@]host[:port]}): verify "
            "each bundle on a device of its profile; a bundle failing there fails the build.",
        ),
    ] = None,
    calibrations_dir: CalibrationsDirOpt = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="I/N",
            help="Build only shard I of N (a CI matrix job): pair k, in file order, is shard "
            "((k-1) mod N)+1. Writes OUT/index.shard-I-of-N.json; --merge joins them.",
        ),
    ] = None,
    merge: Annotated[
        bool,
        typer.Option(
            "--merge",
            help="Convert nothing: join the N shard indexes in OUT into index.json, as a build "
            "of every pair writes it (exit code as the build's).",
        ),
    ] = False,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Run the pairs as Ray tasks (extra `ray`), each asking for the CPUs and memory "
            "its plan estimates; OUT and the model folders must be shared storage. Connects "
            "as ray.init() does: RAY_ADDRESS, else a cluster started here, else a local one.",
        ),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            metavar="ADDRESS",
            help="With --ray (implied): the cluster, as ray.init(address=...): auto, "
            "host:port, ray://host:port.",
        ),
    ] = None,
    export_cache: Annotated[
        Path | None,
        typer.Option(
            "--export-cache",
            help="Folder for the fp32 exports the pairs share (a fresh subfolder, removed when "
            "the build ends). Default: a temporary folder; with --ray, OUT/.export-cache.",
        ),
    ] = None,
) -> None:
    """Convert every model x profile pair of BUILD_FILE (for CI); index.json lists the results."""
    from edgeport.build import (
        Shard,
        build_exit_code,
        load_build_file,
        load_devices_file,
        merge_shards,
        run_build,
    )
    from edgeport.errors import BadInputError

    if merge:
        others = [
            name
            for name, given in (
                ("--shard", shard is not None),
                ("--ray", ray or ray_address is not None),
                ("--devices", devices is not None),
                ("--export-cache", export_cache is not None),
                ("--force", force),
            )
            if given
        ]
        if others:
            raise BadInputError(f"--merge converts nothing: drop {', '.join(others)}")
    selected = Shard.parse(shard) if shard is not None else None
    build = load_build_file(build_file)
    if out is not None:
        build = build.model_copy(update={"out": out})
    if merge:
        records, index = merge_shards(build)
    else:
        from edgeport.build_ray import RayCluster

        inventory = load_devices_file(devices) if devices is not None else None
        with console_progress() as progress:
            records, index = run_build(
                build,
                catalog=_catalog(profiles_dir, recipes_dir, calibrations_dir),
                progress=progress,
                force=force,
                devices=inventory,
                shard=selected,
                export_cache=export_cache,
                ray=RayCluster(ray_address) if ray or ray_address is not None else None,
            )
    failed = [r for r in records if r["exit_code"] != 0]
    shipped = len(records) - len(failed)
    what = f"shard {selected}: " if selected is not None else ""
    err.print(f"{what}{shipped}/{len(records)} pairs shipped; index: {escape(str(index))}")
    for record in failed:
        err.print(
            f"[red]failed[/]: {escape(record['model'])} on {escape(record['profile'])}: "
            f"{escape(str(record['error']))}",
            soft_wrap=True,
        )
    if json_output:
        payload: dict[str, Any] = {"index": str(index), "pairs": records}
        if selected is not None:
            payload["shard"] = str(selected)
        _emit_json(payload)
    code = build_exit_code(records)
    if code:
        raise typer.Exit(code)


@app.command("plan")
def plan_command(
    model: ModelArg,
    profile: ProfileOpt,
    revision: RevisionOpt = None,
    task: TaskOpt = None,
    objective: ObjectiveOpt = None,
    max_size: MaxSizeOpt = None,
    json_output: JsonOpt = False,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
    profiles_dir: ProfilesDirOpt = None,
    recipes_dir: RecipesDirOpt = None,
    calibrations_dir: CalibrationsDirOpt = None,
) -> None:
    """Show the ordered candidates for MODEL on a device, and why others were dropped.

    Speeds are measured ones where the profile has a calibration (`profiles calibrate`),
    the recipes' estimates elsewhere; the table and --json say which.
    """
    from edgeport.pipeline import ConvertRequest, explain_empty_plan, make_plan

    catalog = _catalog(profiles_dir, recipes_dir, calibrations_dir)
    request = ConvertRequest(
        model=model,
        profile=profile,
        revision=revision,
        task=task,
        objective=_check_objective(objective),
        max_size_mb=_check_max_size(max_size),
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        catalog=catalog,
    )
    try:
        result = make_plan(request, console_progress())
    except EdgeportError as exc:  # refused from the metadata: its numbers are the answer
        if json_output and exc.details:
            _emit_json(refused_plan_json(exc))
        raise
    problem = None if result.candidates else explain_empty_plan(result)
    calibration = catalog.calibration_file(result.profile.id)
    if json_output:
        payload = plan_json(result, calibration)
        if problem is not None:
            payload["error"] = {
                "exit_code": problem.exit_code,
                "type": type(problem).__name__,
                "message": one_line(str(problem)),
            }
        _emit_json(payload)
    else:
        print_plan(result, calibration)
    if problem is not None:
        raise problem


def _footprint_json(numbers: dict[str, Any]) -> dict[str, Any]:
    """A footprint's numbers as `plan --json` gives them, on success and on exit 5."""
    return {key: value for key, value in numbers.items() if key not in {"model", "profile"}}


def refused_plan_json(error: EdgeportError) -> dict[str, Any]:
    """`plan --json` for a model refused before any candidate was considered (nothing
    fits, by its metadata; or it fits but is unsupported): its numbers and the error."""
    return {
        "model": error.details.get("model"),
        "profile": error.details.get("profile"),
        **_footprint_json(error.details),
        "candidates": [],
        "dropped": [],
        "error": {
            "exit_code": error.exit_code,
            "type": type(error).__name__,
            "message": one_line(str(error)),
        },
    }


def plan_json(result: Plan, calibration: Path | None = None) -> dict[str, Any]:
    numbers = result.footprint.model_dump() if result.footprint is not None else {}
    return {
        "model": result.model.display_name,
        "commit": result.model.commit,
        "task": result.model.task,
        "family": result.model.family,
        "profile": result.profile.id,
        **_footprint_json(numbers),
        "calibration": str(calibration) if calibration is not None else None,
        "candidates": [
            {
                "rank": index,
                "recipe": c.recipe.id,
                "target": c.target.id,
                "device": c.device,
                "precision": c.recipe.precision,
                "estimated_speedup": c.estimated_speedup,
                "speed_source": c.speed_source,
                "estimated_size_mb": c.estimated_size_mb,
                "estimated_memory_mb": c.estimated_memory_mb,
                "reason": c.reason,
            }
            for index, c in enumerate(result.candidates, start=1)
        ],
        "dropped": [d.model_dump() for d in result.dropped],
    }


def print_plan(result: Plan, calibration: Path | None = None) -> None:
    from edgeport.model_shape import count_words

    model = result.model
    active = model.active_parameter_count
    params = f"{count_words(model.parameter_count)} params" + (
        f", {count_words(active)} active" if active != model.parameter_count else ""
    )
    err.print(
        f"[bold]{model.display_name}[/] ({model.model_type}, {model.task}, {params}) "
        f"on [bold]{result.profile.id}[/]"
    )
    if result.footprint is not None:
        from edgeport.planner import describe_footprint

        err.print(f"memory: {escape(describe_footprint(result.footprint))}", soft_wrap=True)
    measured = sum(c.speed_source == "measured" for c in result.candidates)
    if calibration is None:
        err.print(
            f"speeds: the recipes' estimates ({result.profile.id} has no calibration: "
            "`edgeport profiles calibrate` measures them on a device)"
        )
    else:
        err.print(
            f"speeds: measured on the device for {measured} of {len(result.candidates)} "
            f"candidates ({escape(str(calibration))}), the recipes' estimates for the rest",
            soft_wrap=True,
        )
    table = Table(title="Candidates, best first")
    for column in ("#", "recipe", "target", "device", "precision", "speed", "why"):
        table.add_column(column)
    for index, c in enumerate(result.candidates, start=1):
        speed = f"{c.estimated_speedup:.2f}x {c.speed_source}"
        table.add_row(
            str(index), c.recipe.id, c.target.id, c.device, c.recipe.precision, speed, c.reason
        )
    err.print(table)
    if result.dropped:
        dropped = Table(title="Dropped")
        for column in ("recipe", "target", "why"):
            dropped.add_column(column)
        for d in result.dropped:
            dropped.add_row(d.recipe_id, d.target_id, d.reason)
        err.print(dropped)


@profiles_app.command("list")
def profiles_list(profiles_dir: ProfilesDirOpt = None, json_output: JsonOpt = False) -> None:
    """List the device profiles."""
    catalog = _catalog(profiles_dir)
    if json_output:
        _emit_json({"profiles": [p.model_dump(mode="json") for p in catalog.profiles.values()]})
        return
    table = Table(title="Device profiles")
    for column in ("id", "name", "arch", "cores", "RAM MB", "features", "runtimes"):
        table.add_column(column)
    for p in sorted(catalog.profiles.values(), key=lambda p: p.id):
        table.add_row(
            p.id,
            p.name,
            p.cpu.arch,
            str(p.cpu.cores),
            f"{p.memory_mb:,}",
            " ".join(p.cpu.features),
            ", ".join(r.target for r in p.runtimes),
        )
    table.add_row("host", "this machine, probed at run time", "", "", "", "", "")
    err.print(table)


@profiles_app.command("show")
def profiles_show(profile_id: str, profiles_dir: ProfilesDirOpt = None) -> None:
    """Print one profile as YAML (`host` probes this machine)."""
    import yaml

    profile = _catalog(profiles_dir).profile(profile_id)
    data = profile.model_dump(mode="json", exclude_none=True)
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


@profiles_app.command("validate")
def profiles_validate(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Profile YAML files, or folders of them.", show_default=False),
    ],
    json_output: JsonOpt = False,
) -> None:
    """Check profile files as a pull request's CI does: one line per problem, exit 2 if any."""
    from edgeport.catalog import load_targets
    from edgeport.profile_tools import validate_profile_files

    outcome = validate_profile_files(paths, load_targets())
    if json_output:
        files = [str(path) for path in outcome.files]
        _emit_json({"ok": outcome.ok, "files": files, "problems": outcome.problems})
    for line in outcome.problems:
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    err.print(outcome.summary(), markup=False, highlight=False, soft_wrap=True)
    if not outcome.ok:
        raise typer.Exit(2)


@profiles_app.command("schema")
def profiles_schema(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the JSON Schema to this file.")
    ] = None,
) -> None:
    """Print the JSON Schema of profile files (for editors), or write it with --out."""
    from edgeport.profile_tools import render_json_schema

    text = render_json_schema()
    if out is None:
        sys.stdout.write(text)
        return
    out.write_text(text, encoding="utf-8")
    err.print(f"wrote {out}", markup=False, highlight=False)


@profiles_app.command("detect")
def profiles_detect(
    profile_id: Annotated[
        str | None,
        typer.Option("--id", help="Write this id; by default the id is the saved file's name."),
    ] = None,
) -> None:
    """Probe this machine and print a profile YAML to save, edit and validate."""
    from edgeport.catalog import load_targets
    from edgeport.errors import BadInputError
    from edgeport.host import probe_host_profile
    from edgeport.profile_tools import detected_profile_yaml
    from edgeport.schemas import SLUG_PATTERN

    if profile_id is not None and not re.fullmatch(SLUG_PATTERN, profile_id):
        raise BadInputError(
            f"--id {profile_id!r}: use lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    profile = probe_host_profile(load_targets(), profile_id or "my-board")
    sys.stdout.write(detected_profile_yaml(profile, write_id=profile_id is not None))


@profiles_app.command("calibrate")
def profiles_calibrate(
    profile_id: Annotated[
        str, typer.Argument(metavar="PROFILE", help="Profile id, or a path to a profile YAML.")
    ],
    on: Annotated[
        str,
        typer.Option(
            "--on",
            metavar="ssh://[user@]host[:port]",
            help="A device of this profile, over SSH (your ssh client and ~/.ssh/config).",
        ),
    ],
    python: Annotated[
        str | None, typer.Option("--python", help="The device's Python (default: python3).")
    ] = None,
    ssh_option: Annotated[
        list[str] | None,
        typer.Option("--ssh-option", help="Passed to ssh as -o OPTION (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Calibration file to write (default: calibrations/PROFILE.yaml)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing calibration file.")] = False,
    runs: Annotated[
        int | None, typer.Option(help="Timed runs of each graph and shape (default 10).")
    ] = None,
    warmup: Annotated[int | None, typer.Option(help="Untimed runs first (default 3).")] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="Intra-op threads (default: the profile's cores, as bundles run)."),
    ] = None,
    layers: Annotated[
        int | None, typer.Option(help="Layers of the reference graph (default 4).")
    ] = None,
    hidden: Annotated[
        int | None, typer.Option(help="Width of the reference graph (default 384).")
    ] = None,
    tokens: Annotated[
        int | None, typer.Option(help="Tokens of the batch shape (default 256).")
    ] = None,
    json_output: JsonOpt = False,
    profiles_dir: ProfilesDirOpt = None,
    recipes_dir: RecipesDirOpt = None,
) -> None:
    """Measure on a device how fast each precision runs on each runtime of PROFILE.

    Reference graphs (MatMul stacks, built here with every recipe's quantisation) are timed
    on the device over SSH; the speedups are written as a calibration file, which `plan`
    and `convert` then use instead of the recipes' estimates.
    """
    from dataclasses import replace

    from edgeport import calibrate as cal
    from edgeport import device

    catalog = _catalog(profiles_dir, recipes_dir)
    profile = catalog.profile(profile_id)
    target = out or cal.default_out(profile.id)
    cal.check_destination(target, force)
    spec = cal.GraphSpec()
    for name, value in (("layers", layers), ("hidden", hidden), ("tokens", tokens)):
        if value is not None:
            spec = replace(spec, **{name: value})
    calibration = cal.calibrate(
        profile,
        on,
        list(catalog.recipes.values()),
        python=python or device.DEFAULT_PYTHON,
        ssh_options=ssh_option or (),
        spec=spec,
        warmup=cal.DEFAULT_WARMUP if warmup is None else warmup,
        runs=cal.DEFAULT_RUNS if runs is None else runs,
        threads=threads,
        progress=console_progress(),
    )
    text = cal.calibration_yaml(calibration, f"edgeport profiles calibrate {profile.id}")
    written = cal.write_calibration(text, target, force)
    table = Table(title=f"Measured on {calibration.label}")
    for column in ("runtime", "precision", "batch", "x ORT fp32", "x own fp32", "1 token", "x ORT"):
        table.add_column(column)
    for row in cal.table_rows(calibration):
        table.add_row(*row)
    err.print(table)
    for skipped in calibration.skipped:
        what = f"{skipped.target} {skipped.key}" if skipped.key else skipped.target
        err.print(f"not measured: {what}: {skipped.reason}", markup=False, soft_wrap=True)
    err.print(
        f"wrote {written}: `edgeport plan` uses it for {profile.id} from the repository's "
        "calibrations/, $EDGEPORT_CALIBRATIONS_DIR or --calibrations-dir",
        markup=False,
        soft_wrap=True,
    )
    if json_output:
        _emit_json({"file": str(written), **calibration.model_dump(mode="json")})


@recipes_app.command("list")
def recipes_list(recipes_dir: RecipesDirOpt = None, json_output: JsonOpt = False) -> None:
    """List the conversion recipes."""
    catalog = _catalog(None, recipes_dir)
    if json_output:
        _emit_json({"recipes": [r.model_dump(mode="json") for r in catalog.recipes.values()]})
        return
    table = Table(title="Recipes")
    for column in ("id", "target", "precision", "safety", "description"):
        table.add_column(column)
    for r in sorted(catalog.recipes.values(), key=lambda r: (r.target, r.safety, r.id)):
        table.add_row(r.id, r.target, r.precision, str(r.safety), r.description)
    err.print(table)


@recipes_app.command("show")
def recipes_show(recipe_id: str, recipes_dir: RecipesDirOpt = None) -> None:
    """Print one recipe as YAML."""
    import yaml

    recipe = _catalog(None, recipes_dir).recipe(recipe_id)
    sys.stdout.write(
        yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
    )


def _version_callback(value: bool) -> None:
    if value:
        sys.stdout.write(f"edgeport {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log details to stderr.")
    ] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr)


class Terminated(BaseException):
    """SIGTERM (CI cancelling a job, `kill`): unwinds like Ctrl-C so that every temporary
    folder and half-written bundle is removed on the way out."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


# Exit codes of a process stopped by a signal, as a shell reports them (128 + signal).
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
MESSAGE_LIMIT = 500


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """A message as one line of bounded length: libraries' multi-line texts and long
    values echoed from hostile input must not flood a terminal or a CI log."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _wants_json(argv: list[str]) -> bool:
    return "--json" in argv


def _fail(message: str, code: int, kind: str, argv: list[str]) -> None:
    """Print the one-line error (stderr) and, under --json, one error object (stdout)."""
    message = one_line(message)
    label = "internal error" if code == 1 else "error"
    err.print(f"[bold red]{label}:[/] {escape(message)}", soft_wrap=True)
    if _wants_json(argv) and not _json_emitted:
        _emit_json({"error": {"exit_code": code, "type": kind, "message": message}})
    sys.exit(code)


def main() -> None:
    """Console entry point: map exceptions to one-line messages and exit codes."""
    import signal

    debug = os.environ.get("EDGEPORT_DEBUG") == "1"
    argv = sys.argv[1:]
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except EdgeportError as exc:
        if debug:
            raise
        _fail(str(exc), exc.exit_code, type(exc).__name__, argv)
    except ModuleNotFoundError as exc:  # an optional code path's dependency is missing
        if debug:
            raise
        from edgeport.dependencies import install_hint
        from edgeport.errors import UnsupportedError

        _fail(install_hint(exc.name or str(exc)), UnsupportedError.exit_code, "MissingModule", argv)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        err.print("terminated")
        sys.exit(EXIT_TERMINATED)
    except Exception as exc:  # the last line of defence: one line, exit 1
        # Typer 0.29 vendors click: its usage errors are not click's own classes.
        show = getattr(exc, "show", None)
        exit_code = getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            if _wants_json(argv):
                format_message = getattr(exc, "format_message", None)
                message = format_message() if callable(format_message) else str(exc)
                _fail(str(message), exit_code, "UsageError", argv)
            show()
            sys.exit(exit_code)
        if debug:
            raise
        _fail(
            f"{type(exc).__name__}: {exc} (set EDGEPORT_DEBUG=1 for the traceback)",
            1,
            type(exc).__name__,
            argv,
        )
