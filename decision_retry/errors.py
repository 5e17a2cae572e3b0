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


class EngineLost(DecisionRetryError):
    """The engine stopped answering: a server down, or hung, past its retries. `fix` ends the run
    with outcome `engine-lost`, its trace kept, and `fix --resume RUN` continues it once the
    engine is back (docs/scaling.md)."""

    def __init__(self, where: str, tries: int, reason: str) -> None:
        super().__init__(f"the {where} stopped answering after {tries} "
                         f"{'try' if tries == 1 else 'tries'}: {reason}")
        self.where, self.tries, self.reason = where, tries, reason

    def __reduce__(self):  # pickled as its parts (bench workers send errors to their parent)
        return type(self), (self.where, self.tries, self.reason)
