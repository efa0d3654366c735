"""The library's one exception family; cli.py maps it to the envelope and an exit code.

Exit codes (DESIGN.md): 1 ran and found problems, 2 bad input (nothing done),
3 refused for safety or a precondition (nothing done).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3


class BakError(Exception):
    """A failure the operator can act on: a stable code, where it happened and a hint."""

    exit_code = EXIT_PROBLEMS
    code = "failed"

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None,
                 code: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint
        if code:
            self.code = code
        self.details = details or {}

    def to_error(self) -> dict:
        return {"code": self.code, "message": self.message, "where": self.where, "hint": self.hint}


class BadInput(BakError):
    exit_code = EXIT_BAD_INPUT
    code = "bad_input"


class ConfigError(BadInput):
    """Carries every schema problem at once, so the operator fixes them in one pass."""

    code = "config_invalid"

    def __init__(self, problems: list[dict], *, source: str | None = None):
        self.problems = problems
        first = problems[0]["message"] if problems else "invalid config"
        summary = f"{len(problems)} problem(s) in config" + (f" {source}" if source else "")
        super().__init__(f"{summary}: {first}", where=source,
                         hint="Run `bak config example` for a valid example; every key is documented in references/config.md.")

    def to_errors(self) -> list[dict]:
        return [{"code": self.code, "message": p["message"], "where": p["where"], "hint": p.get("hint")}
                for p in self.problems]


class Refused(BakError):
    """Nothing was done because doing it would be unsafe or a precondition failed."""

    exit_code = EXIT_REFUSED
    code = "refused"


class LockHeld(Refused):
    code = "lock_held"


class JournalBusy(Refused):
    code = "journal_busy"


class HostKeyUnknown(Refused):
    code = "host_key_unknown"


class HostKeyMismatch(Refused):
    code = "host_key_mismatch"


class NoSpace(Refused):
    code = "no_space"


class ToolMissing(Refused):
    code = "tool_missing"


class CommandFailed(BakError):
    """A process we started exited non-zero; keeps its exit status and stderr tail."""

    code = "command_failed"

    def __init__(self, message: str, *, returncode: int | None = None, stderr_tail: str = "", **kw):
        super().__init__(message, **kw)
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class TransportError(BakError):
    """The connection to a host failed or dropped."""

    code = "transport"


class WriteFailed(BakError):
    code = "write_failed"


class VerifyFailed(BakError):
    code = "verify_failed"
