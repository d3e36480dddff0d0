"""Errors a user can act on, each carrying the exit code the CLI reports it with."""

from __future__ import annotations

EXIT_OK = 0
EXIT_PLAN = 1  # invalid plan, a conflict left for the user, a refused deletion
EXIT_USAGE = 2  # usage or configuration error
EXIT_REDIS = 3  # Redis unreachable or refused the credentials


class TtsyncdError(Exception):
    """Base class: `str(error)` is the one line shown to the user."""

    exit_code = EXIT_PLAN


class PlanError(TtsyncdError):
    """The plan file cannot be used; each problem names file and line."""

    exit_code = EXIT_PLAN

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ConfigError(TtsyncdError):
    exit_code = EXIT_USAGE


class RedisUnavailable(TtsyncdError):
    exit_code = EXIT_REDIS


class SyncRefused(TtsyncdError):
    """A sync that would do harm (mass deletion) or needs the user (manual conflict)."""

    exit_code = EXIT_PLAN


class DeletionsRefused(SyncRefused):
    """The deletion guard refused a sync that would remove many tasks from the file."""
