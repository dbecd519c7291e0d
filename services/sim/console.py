"""What the terminal shows: a progress bar while a run goes, the summary table after it."""

from __future__ import annotations

import time

from services.units import NS_PER_S

from .run_files import RunResult


class ProgressBar:
    """Simulated time, percentage, speed against real time and time left, on a rich bar."""

    def __init__(self, label: str, duration_ns: int):
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self._rp = Progress(  # fits 80 columns (a log, CI): the label first, then the figures
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=12),
            TaskProgressColumn(),
            TextColumn("{task.fields[sim]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("eta"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._rp.start()
        self._bar = self._rp.add_task(label, total=duration_ns, sim="", rate="")
        self._wall0 = time.perf_counter()

    def update(self, t_ns: int, epochs: int) -> None:
        wall = max(time.perf_counter() - self._wall0, 1e-9)
        self._rp.update(
            self._bar,
            completed=t_ns,
            sim=f"{t_ns / NS_PER_S:.0f} s",
            rate=f"{t_ns / NS_PER_S / wall:.1f}x real time",
        )

    def close(self) -> None:
        self._rp.stop()


def print_summary(result: RunResult) -> None:
    """The table a newcomer reads first: what reporting bought and what it cost."""
    from rich.console import Console

    from .report import summary_lines, summary_rows

    s = result.summary
    header, rows = summary_rows(s)
    title = f"{s['name']} (run {s['run_id']}, seed {s['seed']}, {s['duration_seconds']:.0f} s simulated)"
    print_table(title, header, rows)
    console = Console()
    for label, value in summary_lines(s):
        console.print(f"  {label}: [bold]{value}[/bold]")


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A plain table on the terminal (rich): the first column left, the rest right."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    Console().print(table)
