"""One exception hierarchy. User-facing failures carry an exit code and a one-line message."""


class DecisionRetryError(Exception):
    """Base class; `str(err)` is the one line shown to the user."""

    exit_code = 1


class BadInput(DecisionRetryError):
    """The user asked for something we cannot do (bad flag, bad path, bad repository)."""

    exit_code = 2


class ModelLoadError(BadInput):
    """A model could not be found or loaded."""


class WorkspaceError(DecisionRetryError):
    """A git operation on the private worktree failed."""
