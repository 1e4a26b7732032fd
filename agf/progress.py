"""Progress bars on stderr, silenced by ``quiet``."""

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

console = Console(stderr=True, soft_wrap=True)


class AverageRate(ProgressColumn):
    """Files (or tracks) per second since the start."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        # the average since the start, as the closing summary reports it (rich's own speed is of
        # the last 30 s, which disagrees with the summary after a slow start)
        elapsed = task.finished_time if task.finished else task.elapsed
        return Text(f"{task.completed / elapsed:.1f} {self.unit}/s" if task.completed and elapsed else "")


class _Bar:
    def __init__(self, progress: Progress | None = None, task=None):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, info: str | None = None) -> None:
        """Count ``n`` more done; ``info`` replaces the text after the bar (e.g. a loss)."""
        if self._progress is not None:
            extra = {} if info is None else {"info": info}
            self._progress.update(self._task, advance=n, **extra)


@contextmanager
def progress_bar(total: int | None, description: str, unit: str = "files", quiet: bool = False):
    """A bar with count, rate in ``unit``/s and ETA; yields an object with ``advance(n, info)``."""
    if quiet:
        yield _Bar()
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        AverageRate(unit),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=console) as progress:
        yield _Bar(progress, progress.add_task(description, total=total, info=""))


def say(message: str, quiet: bool = False) -> None:
    """A message for the user on stderr (stdout is for data)."""
    if not quiet:
        console.print(message, highlight=False)
