"""Progress bars on stderr, silenced by ``quiet``."""

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

console = Console(stderr=True, soft_wrap=True)


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} {self.unit}/s" if task.speed else "")


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
        _RateColumn(unit),
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
