"""Worker processes for `bench`: jobs in, results out in completion order, and a worker that dies
(the OOM killer, a stray `kill -9`) fails only the job it held.

`multiprocessing.Pool` replaces a dead worker but loses its task, so `imap_unordered` waits for
it forever; `concurrent.futures.ProcessPoolExecutor` breaks every pending future at once and
cannot stop its workers (no public way before Python 3.14). Here each worker has its own pipe,
the parent knows which job each one holds, a dead worker's job comes back as `Died` (a job that
raised, as `Raised`: a traceback on the worker's stderr said nothing the parent could store), and
a fresh worker with the same start-up arguments takes its slot while jobs remain.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any


@dataclass(frozen=True)
class Died:
    """A worker exited while it held a job; `exitcode` as multiprocessing reports it."""

    exitcode: int | None

    def reason(self) -> str:
        code = self.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            return f"the worker was killed by {name}{hint}"
        return f"the worker exited with code {code}"


@dataclass(frozen=True)
class Raised:
    """A job raised in its worker (which goes on to the next job); `error` names the exception."""

    error: str

    @classmethod
    def of(cls, err: BaseException) -> Raised:
        return cls(f"{type(err).__name__}: {err}")

    def reason(self) -> str:
        return f"the job raised {self.error}"


@dataclass(frozen=True)
class _InitFailed:
    error: BaseException


def _serve(conn, fn: Callable, init: Callable, args: tuple) -> None:
    """A worker: start up once, then answer jobs until the parent sends None or goes away."""
    try:
        init(*args)
    except Exception as err:  # noqa: BLE001 - reported to the parent, which re-raises it
        conn.send(_InitFailed(err))
        return
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the parent is gone
            return
        if job is None:
            return
        try:
            result = fn(job)
        except Exception as err:  # noqa: BLE001 - the job's failure, not the worker's
            result = Raised.of(err)
        conn.send(result)


class _Slot:
    """One worker process, its end of the pipe and the job it holds (None when idle)."""

    def __init__(self, ctx, fn: Callable, init: Callable, args: tuple):
        self.conn, child = ctx.Pipe()
        self.args = args
        self.proc = ctx.Process(target=_serve, args=(child, fn, init, args), daemon=True)
        self.proc.start()
        child.close()
        self.job: Any = None

    def give(self, jobs: list) -> None:
        """Send the next job, or None (exit) when there is none."""
        self.job = jobs.pop() if jobs else None
        try:
            self.conn.send(self.job)
        except OSError:  # it died before reading: its sentinel reports it
            pass


def imap_unordered(fn: Callable, jobs: Iterable, *, init: Callable, slots: Sequence[tuple],
                   ctx) -> Iterator[tuple[Any, Any]]:
    """(job, fn(job)) as jobs finish, `fn` running in one process per entry of `slots` (each
    started with `init(*slot)`); a job whose worker died yields (job, Died(exitcode)), one that
    raised (job, Raised). A worker that fails to start raises its error here. When the caller
    stops early (an exception, or closing the generator), the workers get SIGTERM and are waited
    for."""
    todo = list(jobs)[::-1]  # pop() takes them in order
    live = [_Slot(ctx, fn, init, args) for args in slots[:len(todo)]]
    try:
        for slot in live:
            slot.give(todo)
        while live:
            ready = set(wait([s.conn for s in live] + [s.proc.sentinel for s in live]))
            for slot in list(live):
                if slot.conn in ready:
                    try:
                        result = slot.conn.recv()
                    except EOFError:  # it exited: below
                        pass
                    else:
                        if isinstance(result, _InitFailed):
                            raise result.error
                        yield slot.job, result
                        slot.give(todo)
                        continue
                elif slot.proc.sentinel not in ready:
                    continue
                slot.proc.join()  # it has exited (or is exiting)
                live.remove(slot)
                if slot.job is not None:
                    yield slot.job, Died(slot.proc.exitcode)
                    if todo:  # a fresh worker in its place
                        live.append(_Slot(ctx, fn, init, slot.args))
                        live[-1].give(todo)
    finally:
        for slot in live:
            if slot.job is not None and slot.proc.is_alive():
                slot.proc.terminate()  # SIGTERM: it stops its cell cleanly, then exits
        for slot in live:
            slot.proc.join()
