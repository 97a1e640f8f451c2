"""Mixed precision by sensitivity: keep the few nodes that break int8 in float.

When a fully quantised candidate misses its tolerance, the backend ranks its quantised
nodes by the accuracy each one costs on the *search* inputs (the calibration texts,
never the validation texts, so the final gate still judges unseen inputs). The most
harmful nodes are then kept in float one at a time; each variant is validated and
measured like any other candidate, until one passes or it is no faster than float.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from edgeport.backends import Artifact, InferenceSession
    from edgeport.schemas import Attempt, Candidate

MAX_FLOAT_NODES = 8
Probe = Callable[["InferenceSession"], float]


@runtime_checkable
class SensitivityRanking(Protocol):
    """Optional backend capability: which quantised nodes cost the most accuracy."""

    def rank_sensitive_nodes(
        self, artifact: Artifact, probe: Probe, threads: int
    ) -> list[tuple[str, float]]:
        """(node name, probe score with only that node quantised), most harmful first."""


def with_float_nodes(candidate: Candidate, nodes: Sequence[str]) -> Candidate:
    quantize = candidate.recipe.quantize.model_copy(update={"exclude_nodes": list(nodes)})
    recipe = candidate.recipe.model_copy(update={"quantize": quantize})
    return candidate.model_copy(update={"recipe": recipe})


def float_node_variants(
    ranking: Sequence[tuple[str, float]], limit: int = MAX_FLOAT_NODES
) -> Iterator[list[str]]:
    """Growing sets of nodes to keep in float, most harmful first: 1, 2, 4, 8 nodes.

    Doubling bounds the search at a few re-quantisations however many nodes there are.
    """
    names = [name for name, _ in ranking[:limit]]
    size = 1
    while names and size <= len(names):
        yield names[:size]
        if size == len(names):
            break
        size = min(size * 2, len(names))


def refine(
    candidate: Candidate,
    artifact: Artifact,
    backend: object,
    probe: Probe,
    threads: int,
    evaluate: Callable[[Candidate, str], Attempt],
    report_progress: Callable[[str], None],
    host_timings_rank: bool = True,
) -> list[Attempt]:
    """Variants of a failed candidate with more and more nodes in float; stops at a pass.

    It also stops when a variant is no faster than float on this host, but only when this
    host's timings stand for the device's: without the device's int8 instructions, the
    host says nothing about what keeping more nodes in float costs there.
    """
    if not isinstance(backend, SensitivityRanking):
        return []
    report_progress(f"{candidate.recipe.id}: ranking quantised nodes by accuracy cost")
    ranking = backend.rank_sensitive_nodes(artifact, probe, threads)
    if not ranking:
        return []
    attempts: list[Attempt] = []
    for nodes in float_node_variants(ranking):
        variant = f"{len(nodes)} node{'s' if len(nodes) > 1 else ''} in float"
        report_progress(f"{candidate.recipe.id}: keeping {nodes[-1]} in float")
        attempt = evaluate(with_float_nodes(candidate, nodes), variant)
        attempts.append(attempt)
        if attempt.status in {"passed", "error"}:
            break
        if host_timings_rank and attempt.latency_ratio is not None and attempt.latency_ratio >= 1.0:
            break  # no faster than float: mixed precision has nothing left to offer
    return attempts
