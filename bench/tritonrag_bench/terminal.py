"""The terminal: one rich console, progress bars and the one-line summary of each measured level."""

from __future__ import annotations

import shutil

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(width=max(shutil.get_terminal_size((160, 24)).columns, 150))  # the table needs ~150 columns


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def ms(seconds: float | None) -> str:
    """Seconds as whole milliseconds; "-" for a number not measured."""
    return "-" if seconds is None else f"{seconds * 1e3:.0f}"


def say_level(target: str, c: int, m: dict) -> None:
    console.print(
        f"  {target:7s} c={c:<3d} {m['output_tok_s']:8.1f} out tok/s  {m['req_s']:6.3f} req/s  "
        f"TTFT p50 {ms(m['ttft_s']['p50'])} ms  ITL p50 {ms(m['itl_s']['p50'])} ms"
    )
