"""One exception hierarchy; each class carries the process exit code the CLI returns.

Exit codes (DESIGN.md): 0 ok, 1 internal error, 2 bad input, 3 accuracy gate failed,
4 unsupported model or target, 5 does not fit the device, 6 the device cannot be reached.
"""

from __future__ import annotations

from collections.abc import Mapping


class EdgeportError(Exception):
    """Base class: an expected failure with a one-line message for the user.

    `details`: numbers known when it failed, which `--json` prints beside the error (the
    footprint of a model planned from its metadata).
    """

    exit_code = 1

    def __init__(self, *args: object, details: Mapping[str, object] | None = None) -> None:
        super().__init__(*args)
        self.details: dict[str, object] = dict(details or {})


class BadInputError(EdgeportError):
    """Usage error, unknown profile, malformed YAML, model not found."""

    exit_code = 2


class CatalogError(BadInputError):
    """A profile, recipe or target file is malformed; the message names file and field."""


class ModelNotFoundError(BadInputError):
    """The Hub id, revision or folder cannot be resolved (offline cache miss included)."""


class AccuracyGateError(EdgeportError):
    """No candidate met its tolerance and degradation was not accepted."""

    exit_code = 3


class UnsupportedError(EdgeportError):
    """The model, task or target cannot be handled (missing extra, unknown architecture)."""

    exit_code = 4


class SecurityError(UnsupportedError):
    """Refused for safety: remote code or pickle weights without explicit consent."""


class DoesNotFitError(EdgeportError):
    """Every candidate was dropped because it would not fit the device."""

    exit_code = 5


class VerificationError(EdgeportError):
    """A bundle failed its own checks (checksums, golden outputs)."""

    exit_code = 3


class DeviceUnreachableError(EdgeportError):
    """`verify --on`: SSH could not connect, log in or keep the connection (host down,
    key refused, timeout). Its own code: an infrastructure failure a CI job may retry,
    unlike bad input (2) or a bundle that failed on the device (3)."""

    exit_code = 6
