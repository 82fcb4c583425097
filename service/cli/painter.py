"""``analyze``'s pictures drawn by a second process that gets ready while the analysis runs.

Why: a cold ``rewardscope analyze`` is mostly start-up. Importing the plotting library and
drawing the first figure (fonts, the Agg canvas) costs ~0.5 s of one core; the analysis
uses about one of the two cores a small machine has. A :class:`Painter` starts a plain
interpreter at once, which imports :mod:`rewardscope.cli.plots` and draws a throw-away figure
while the parent imports the scientific stack and analyses; the parent then hands it the
pictures to draw (function name and arguments, pickled over a pipe) and waits for them. Two
or more pictures are drawn side by side (the painter forks after the hand-over), each in its
own process.

Nothing is lost when the painter cannot help: if it fails to start, dies, or reports an
error, the parent draws the pictures itself (:meth:`Painter.draw` returns why, for the log).

    python -m rewardscope.cli.painter   # the child's side; reads one pickled job list on stdin
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

Job = tuple[str, tuple[Any, ...]]
"""One picture: the name of a :mod:`rewardscope.cli.plots` function and its arguments."""

READY_TIMEOUT_S = 120.0  # a painter that has not drawn its jobs by then is given up on


class Painter:
    """A picture process started now, handed its jobs later (see the module docstring).

    Parameters
    ----------
    parallel : bool, optional
        Draw several pictures side by side (default: when the machine has two or more cores).
    """

    def __init__(self, parallel: bool | None = None) -> None:
        self.parallel = (os.cpu_count() or 1) > 1 if parallel is None else bool(parallel)
        try:
            self.proc_: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", "rewardscope.cli.painter"], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env={**os.environ, "REWARDSCOPE_PAINTER_PARALLEL": str(int(self.parallel))})
        except OSError:
            self.proc_ = None

    def draw(self, jobs: Sequence[Job]) -> str | None:
        """Draw ``jobs``; returns None when the painter drew them all, else why it did not (the
        pictures were then drawn here, in this process)."""
        self.start(jobs)
        return self.wait()

    def start(self, jobs: Sequence[Job]) -> None:
        """Hand ``jobs`` over and return at once: the caller writes its other files while
        they are drawn, then calls :meth:`wait`."""
        self.jobs_ = list(jobs)
        self.why_: str | None = None

        def hand_over() -> None:
            self.why_ = self._hand_over(self.jobs_)

        self.handing_ = threading.Thread(target=hand_over, name="painter-hand-over",
                                         daemon=True)
        self.handing_.start()

    def wait(self) -> str | None:
        """Wait for the jobs of :meth:`start`; as :meth:`draw` returns."""
        self.handing_.join()
        if self.why_ is not None:
            run_jobs(self.jobs_, parallel=False)
        return self.why_

    def _hand_over(self, jobs: list[Job]) -> str | None:
        proc, self.proc_ = self.proc_, None
        if proc is None:
            return "the picture process did not start"
        try:
            _, err = proc.communicate(pickle.dumps(jobs, protocol=pickle.HIGHEST_PROTOCOL),
                                      timeout=READY_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            proc.kill()
            proc.wait()
            return f"the picture process failed: {type(exc).__name__}"
        if proc.returncode:
            tail = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            return f"the picture process exited with {proc.returncode}: {tail[0]}"
        return None

    def close(self) -> None:
        """Stop a painter that was never handed jobs (the analysis failed); idempotent."""
        proc, self.proc_ = self.proc_, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stderr):
                if stream is not None:
                    stream.close()

    def __enter__(self) -> Painter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_jobs(jobs: Sequence[Job], parallel: bool) -> None:
    """Draw each job with :mod:`rewardscope.cli.plots`; with ``parallel``, every job after the
    first in a forked copy of this process (POSIX), the first here, then wait for all."""
    from rewardscope.cli import plots  # noqa: PLC0415 - the plotting library, on demand

    jobs = list(jobs)
    pids = []
    if parallel and hasattr(os, "fork") and len(jobs) > 1:
        for job in jobs[1:]:
            pid = os.fork()
            if pid == 0:  # the copy: draw one picture, exit without the parent's clean-up
                code = 0
                try:
                    getattr(plots, job[0])(*job[1])
                except BaseException as exc:  # noqa: BLE001 - reported through the exit code
                    print(f"painter: {job[0]}: {exc!r}", file=sys.stderr)
                    code = 1
                finally:
                    sys.stderr.flush()
                    os._exit(code)
            pids.append(pid)
        jobs = jobs[:1]
    failed = []
    for name, args in jobs:
        getattr(plots, name)(*args)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status):
            failed.append(pid)
    if failed:
        raise RuntimeError(f"{len(failed)} picture(s) failed to draw")


def main() -> int:
    """The painter's side: get ready, read the jobs, draw them. No jobs (EOF): exit 0."""
    # Getting ready is off the critical path: yield the cores to the analysis while it runs
    # (the parent waits idle while the pictures are drawn, so then nothing competes).
    if hasattr(os, "nice"):
        os.nice(10)
    from rewardscope.cli import plots  # noqa: PLC0415

    plots.warm()
    data = sys.stdin.buffer.read()
    if not data:
        return 0
    run_jobs(pickle.loads(data), parallel=os.environ.get("REWARDSCOPE_PAINTER_PARALLEL") == "1")
    return 0


if __name__ == "__main__":
    # Leave at once: the pictures are on disk, and the interpreter's tear-down over the
    # plotting library's objects (~0.2 s) would only delay the parent, which waits for us.
    try:
        status = main()
    except BaseException as exc:  # noqa: BLE001 - the parent reads the last line of stderr
        print(f"painter: {exc!r}", file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
