"""The one exception tree of lamina-batch; the CLI maps each branch to an exit code.

    LaminaBatchError                      base of everything we raise on purpose
    +-- ConfigError                       exit 2: nothing started; carries one or more Problems
    |   +-- SpecError                     pipeline YAML / schema / cross-field checks
    |   +-- MatrixError                   CSV or inline rows, key, where, axes
    |   +-- TemplateError                 a template failed to parse or render
    |   +-- MissingApiKeyError            no credentials: no LAMINA_API_KEY, no stored login (and not --emulator)
    |   +-- CredentialsFileError          ~/.lamina/config.json unreadable or malformed, or cannot be written
    |   +-- PreflightError                the live app definitions refuse our inputs
    |   +-- OptionError                   a run option (`BatchOptions` field / `run` flag) is malformed
    |   +-- UnreachableError              the API cannot be reached or used before anything started
    |   +-- OriginMismatchError           the manifest belongs to another server (binding.py)
    |   +-- CreditsError                  the batch would cost more than the balance, or its cost is unknown
    |                                     under max_credits (refused before any start)
    +-- ManifestError                     the manifest is unreadable, corrupt or of another pipeline (exit 2)
    |   +-- ManifestLockedError           another process holds the writer lock (exit 3)
    |   +-- IllegalTransitionError        a state change the run lifecycle forbids (refused, nothing written)
    +-- DownloadError                     an output file could not be fetched or written (per run)
    |   +-- UnsafePathError               a rendered download path escapes its directory (per run)
    +-- ApiError                          any answer or failure of the Lamina HTTP API
        +-- TransientError                retryable: the same request may simply be sent again
        |   +-- RateLimitedError          429; .retry_after seconds
        |   +-- ServerError               500 / 503 / other 5xx
        |   +-- ConnectError              nothing was sent (DNS, refused, connect timeout)
        |   +-- ReadTimeoutError          a reply that did not come (or did not end) in time
        |   +-- ConnectionLostError       the connection broke after the request was sent
        +-- BatchFatalError               stop every new start; exit 3
        |   +-- AuthError                 401 (missing or rejected key)
        |   |   +-- LoginRefreshError     the stored OAuth login cannot be refreshed or kept: `lamina login` again
        |   +-- ForbiddenError            403
        |   +-- InsufficientCreditsError  the account is out of credits
        |   +-- EndpointError             the base URL is no usable Lamina API: TLS verification failed, a redirect
        +-- RunFatalError                 this run cannot succeed as asked
        |   +-- InputValidationError      400 VALIDATION_ERROR (with .details)
        |   +-- NotFoundError             404
        +-- UnknownOutcomeError           a start was sent but its reply was lost: reconcile, never resend

Retryability is a property of the type (`isinstance(e, TransientError)`), never of message text.
No message built here contains the API key: errors carry method, path, status, code and requestId only.
The same holds for OAuth access and refresh tokens (credentials/ scrubs any text a server echoes).
A LoginRefreshError is an AuthError, so it is fatal like a rejected key: exit 2 before any start (the CLI), exit 3
and resumable once the batch has started (the executor stops starting); it is never retried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input, rendered as `where: path: message (hint)`."""

    message: str
    file: str | None = None
    line: int | None = None
    path: str | None = None  # e.g. "steps[1].inputs" or "row 14" or "column 'sku'"
    hint: str | None = None  # e.g. "did you mean 'prompt'?"

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
        parts = [p for p in (where, self.path) if p]
        text = ": ".join([*parts, self.message])
        if self.hint:
            text += f" ({self.hint})"
        return text


class LaminaBatchError(Exception):
    """Base of every error lamina-batch raises on purpose."""


class ConfigError(LaminaBatchError):
    """Invalid input found before anything was started; holds every problem found, not just the first."""

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class SpecError(ConfigError):
    """The pipeline file is malformed, fails the schema or a cross-field check."""


class MatrixError(ConfigError):
    """The CSV / inline rows / key / where / axes are unusable."""


class TemplateError(ConfigError):
    """A Jinja template did not parse or did not render for some row."""


class MissingApiKeyError(ConfigError):
    """No credentials: LAMINA_API_KEY is unset and there is no usable stored login (or the key is malformed)."""


class CredentialsFileError(ConfigError):
    """The stored login file is unreadable or malformed, or cannot be written to keep a rotated OAuth pair."""


class PreflightError(ConfigError):
    """The live app definitions refuse the rendered inputs (unknown names, bad options, missing params)."""


class OptionError(ConfigError):
    """A run option (a `BatchOptions` field, which is also a `run` flag) is malformed or inconsistent.

    `template` names the options it mentions as `{0}`, `{1}`... (`names`), so each caller words them its own
    way: the library says `rate_limit`, the CLI `--rate-limit`."""

    def __init__(self, template: str, *names: str) -> None:
        self.template = template
        self.names = names
        super().__init__(self.worded(lambda name: name))

    def worded(self, name: Callable[[str], str]) -> str:
        """The message with every option named by `name(option)`."""
        return self.template.format(*(name(n) for n in self.names))


class UnreachableError(ConfigError):
    """Before anything started, the API at the base URL could not be reached or used: connection refused,
    unknown host, TLS verification failure, a redirect, a reply that is not the API's. Nothing was started."""


class OriginMismatchError(ConfigError):
    """The manifest was made against another API origin (or the emulator): acting on it here would mix two
    servers' runs. The message names both origins and the fix."""


class CreditsError(ConfigError):
    """Refused before the first start: the expected cost of what this invocation may start exceeds the balance,
    or the cost is unknown while `max_credits` is set (never spend blind under a budget)."""


class ManifestError(LaminaBatchError):
    """The manifest is corrupt, of a newer schema, or belongs to another pipeline."""


class ManifestLockedError(ManifestError):
    """Another process is writing this manifest."""

    def __init__(self, path: str, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path}: in use by {holder}; wait for it to finish or stop it first")


class IllegalTransitionError(ManifestError):
    """A run state change that `lifecycle.MOVES` does not allow (e.g. starting a completed run again)."""


class DownloadError(LaminaBatchError):
    """An output could not be downloaded or written; the run is reported, the batch goes on."""


class UnsafePathError(DownloadError):
    """A rendered download path would leave its output directory."""


class ApiError(LaminaBatchError):
    """Any failure talking to Lamina. Messages name method, path, status and code, never credentials."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        method: str | None = None,
        path: str | None = None,
        details: Any = None,
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.method = method
        self.path = path
        self.details = details
        super().__init__(self._render())

    def _render(self) -> str:
        head = " ".join(x for x in (self.method, self.path) if x)
        tail = []
        if self.status is not None:
            tail.append(f"HTTP {self.status}")
        if self.code:
            tail.append(self.code)
        if self.request_id:
            tail.append(f"requestId {self.request_id}")
        text = self.message
        if head:
            text = f"{head}: {text}"
        if tail:
            text += f" [{', '.join(tail)}]"
        return text


class TransientError(ApiError):
    """Retryable: sending the same request again is safe and may succeed."""


class RateLimitedError(TransientError):
    """HTTP 429; `retry_after` is the server's requested pause in seconds (None if not given)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class ServerError(TransientError):
    """HTTP 5xx."""


class ConnectError(TransientError):
    """The request never left: connection refused, DNS failure, connect timeout."""


class ReadTimeoutError(TransientError):
    """A reply that did not arrive, or did not finish arriving, in time."""


class ConnectionLostError(TransientError):
    """The connection broke after the request was sent (reset, protocol error): resend only if idempotent."""


class BatchFatalError(ApiError):
    """The whole batch must stop starting runs (key rejected, forbidden, out of credits)."""


class AuthError(BatchFatalError):
    """HTTP 401: the API key is missing or rejected."""


class LoginRefreshError(AuthError):
    """The stored OAuth login could not be refreshed (refused, revoked, no refresh token, network down, a lost
    reply) or its rotated pair could not be stored. `advice` is what the user should do; it ends the message."""

    advice = "run `lamina login` again (or set LAMINA_API_KEY)"

    def __init__(self, message: str, *, advice: str | None = None, **kw: Any) -> None:
        if advice is not None:
            self.advice = advice
        super().__init__(message, **kw)

    def _render(self) -> str:
        return f"{super()._render()}: {self.advice}"


class ForbiddenError(BatchFatalError):
    """HTTP 403."""


class InsufficientCreditsError(BatchFatalError):
    """The account has no credits left for this run."""


class EndpointError(BatchFatalError):
    """The base URL does not lead to a usable Lamina API: its TLS certificate failed verification (nothing was
    sent), or it answered with a redirect (never followed: a redirected POST could be replayed elsewhere)."""


class RunFatalError(ApiError):
    """This run cannot succeed as asked; other runs may."""


class InputValidationError(RunFatalError):
    """HTTP 400 VALIDATION_ERROR; `details` holds the server's per-field reasons when given."""


class NotFoundError(RunFatalError):
    """HTTP 404: the app or run does not exist."""


class UnknownOutcomeError(ApiError):
    """A start request was sent but its reply was lost; the run may or may not exist remotely."""
