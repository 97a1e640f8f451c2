"""The `edgeport` command: thin functions over library calls.

Human output (progress, tables) goes to stderr; `--json` prints one result object on
stdout. Every expected failure is one line and a distinct exit code (errors.py); the
traceback is shown only with EDGEPORT_DEBUG=1.
"""

from __future__ import annotations

import json
import logging
import os
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
    from edgeport.schemas import ConversionResult, Plan

app = typer.Typer(
    name="edgeport",
    help="Convert Hugging Face models into validated bundles for edge devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
profiles_app = typer.Typer(help="Device profiles: list, show.", no_args_is_help=True)
recipes_app = typer.Typer(help="Conversion recipes: list, show.", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
app.add_typer(recipes_app, name="recipes")

err = Console(stderr=True, highlight=False)

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
TrustOpt = Annotated[bool, typer.Option(help="Allow code from the model repository to run.")]
PickleOpt = Annotated[bool, typer.Option(help="Allow pickle (*.bin) weights when no safetensors exist.")]
ObjectiveOpt = Annotated[
    str, typer.Option(help="What the winner minimises among passing candidates: latency, size, accuracy.")
]


class ConsoleProgress:
    def stage(self, message: str) -> None:
        err.print(f"[bold cyan]==>[/] {escape(message)}")

    def info(self, message: str) -> None:
        err.print(f"    {escape(message)}", style="dim")


def _catalog(profiles_dirs: list[Path] | None, recipes_dirs: list[Path] | None = None) -> Catalog:
    from edgeport.catalog import load_catalog

    return load_catalog(tuple(profiles_dirs or ()), tuple(recipes_dirs or ()))


def _emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def _check_objective(objective: str) -> Any:
    if objective not in {"latency", "size", "accuracy"}:
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
        Path | None, typer.Option(help="Your own inputs: .txt (one per line) or .jsonl with 'text'.")
    ] = None,
    recipe: Annotated[
        list[str] | None, typer.Option("--recipe", "-r", help="Only consider these recipes.")
    ] = None,
    objective: ObjectiveOpt = "latency",
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
) -> None:
    """Convert MODEL for a device: plan, export, quantise, validate, and write a bundle."""
    from edgeport.pipeline import ConvertRequest, convert as run_convert

    request = ConvertRequest(
        model=model,
        profile=profile,
        out=out,
        revision=revision,
        task=task,
        samples=samples,
        recipes=frozenset(recipe) if recipe else None,
        objective=_check_objective(objective),
        search_budget_s=search_budget,
        accept_degraded=accept_degraded,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        force=force,
        catalog=_catalog(profiles_dir, recipes_dir),
    )
    result = run_convert(request, ConsoleProgress())
    _print_result(result, request)
    if json_output:
        _emit_json(result_json(result))
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
        "target": chosen.target_id if chosen else None,
        "metrics": {m.name: m.value for m in chosen.validation.metrics} if chosen and chosen.validation else {},
        "latency_ratio_vs_fp32": chosen.latency_ratio if chosen else None,
        "attempts": [
            {
                "recipe": a.recipe_id,
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
        err.print(f"[bold yellow]shipped a degraded model[/] to {result.bundle} (--accept-degraded)")
    else:
        err.print(f"[bold green]bundle ready[/]: {result.bundle}")


@app.command("plan")
def plan_command(
    model: ModelArg,
    profile: ProfileOpt,
    revision: RevisionOpt = None,
    task: TaskOpt = None,
    objective: ObjectiveOpt = "latency",
    json_output: JsonOpt = False,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
    profiles_dir: ProfilesDirOpt = None,
    recipes_dir: RecipesDirOpt = None,
) -> None:
    """Show the ordered candidates for MODEL on a device, and why others were dropped."""
    from edgeport.pipeline import ConvertRequest, explain_empty_plan, make_plan

    request = ConvertRequest(
        model=model, profile=profile, revision=revision, task=task,
        objective=_check_objective(objective), trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle, catalog=_catalog(profiles_dir, recipes_dir),
    )
    result = make_plan(request, ConsoleProgress())
    if json_output:
        _emit_json(plan_json(result))
    else:
        print_plan(result)
    if not result.candidates:
        raise explain_empty_plan(result)


def plan_json(result: Plan) -> dict[str, Any]:
    return {
        "model": result.model.display_name,
        "commit": result.model.commit,
        "task": result.model.task,
        "family": result.model.family,
        "profile": result.profile.id,
        "candidates": [
            {
                "rank": index,
                "recipe": c.recipe.id,
                "target": c.target.id,
                "device": c.device,
                "precision": c.recipe.precision,
                "estimated_speedup": c.estimated_speedup,
                "estimated_size_mb": c.estimated_size_mb,
                "estimated_memory_mb": c.estimated_memory_mb,
                "reason": c.reason,
            }
            for index, c in enumerate(result.candidates, start=1)
        ],
        "dropped": [d.model_dump() for d in result.dropped],
    }


def print_plan(result: Plan) -> None:
    model = result.model
    err.print(
        f"[bold]{model.display_name}[/] ({model.model_type}, {model.task}, "
        f"{model.parameter_count / 1e6:.1f} M params) on [bold]{result.profile.id}[/]"
    )
    table = Table(title="Candidates, best first")
    for column in ("#", "recipe", "target", "device", "precision", "why"):
        table.add_column(column)
    for index, c in enumerate(result.candidates, start=1):
        table.add_row(str(index), c.recipe.id, c.target.id, c.device, c.recipe.precision, c.reason)
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
            p.id, p.name, p.cpu.arch, str(p.cpu.cores), f"{p.memory_mb:,}",
            " ".join(p.cpu.features), ", ".join(r.target for r in p.runtimes),
        )
    table.add_row("host", "this machine, probed at run time", "", "", "", "", "")
    err.print(table)


@profiles_app.command("show")
def profiles_show(profile_id: str, profiles_dir: ProfilesDirOpt = None) -> None:
    """Print one profile as YAML (`host` probes this machine)."""
    import yaml

    profile = _catalog(profiles_dir).profile(profile_id)
    sys.stdout.write(yaml.safe_dump(profile.model_dump(mode="json", exclude_none=True), sort_keys=False))


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
    sys.stdout.write(yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False))


def _version_callback(value: bool) -> None:
    if value:
        sys.stdout.write(f"edgeport {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details to stderr.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr)


def main() -> None:
    """Console entry point: map exceptions to one-line messages and exit codes."""
    debug = os.environ.get("EDGEPORT_DEBUG") == "1"
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except EdgeportError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # the last line of defence: one line, exit 1
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        err.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} "
            "(set EDGEPORT_DEBUG=1 for the traceback)",
            soft_wrap=True,
        )
        sys.exit(1)
