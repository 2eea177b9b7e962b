"""``htx fixtures list`` and ``htx fixtures make``: built-in, shipped and generated test audio."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from htx.console import err, handle_errors, out
from htx.errors import HtxError
from htx.fixtures import describe_fixtures, load_musicgen

app = typer.Typer(help="Test audio: built-in generators and shipped clips with true stems.", no_args_is_help=True)


@app.command("list")
@handle_errors
def list_fixtures(
    directory: Path = typer.Option(None, "--dir", help="also list the clips in this folder (e.g. from `htx fixtures make`)"),
) -> None:
    """Show fixtures with their duration and whether true stems are available."""
    if directory is not None and not directory.is_dir():
        raise HtxError(f"--dir {directory}: no such folder")
    table = Table(title="htx fixtures")
    for col in ("name", "kind", "duration", "stems", "description"):
        table.add_column(col)
    for r in describe_fixtures(directory):
        dur = f"{r['duration_s']:.1f} s" if r["duration_s"] else "configurable (default: one model segment)"
        table.add_row(r["name"], r["kind"], dur, "yes" if r["stems"] else "no", r["description"])
    out().print(table)


@app.command("make")
@handle_errors
def make(
    n: int = typer.Option(10, "--n", min=1, help="how many songs"),
    seed: int = typer.Option(5_000_000, "--seed", help="seed of the first song; song i uses seed + i"),
    out_dir: Path = typer.Option(Path("experiments/music"), "--out", help="folder to write <name>.flac and its stems into"),
    duration: float = typer.Option(8.0, "--duration", min=0.5, max=600, help="seconds per song"),
    workers: int = typer.Option(1, "--workers", min=1, help="processes generating songs in parallel"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
) -> None:
    """Generate songs with true stems (drums, bass, other, vocals) as FLAC; use them by path in a config."""
    musicgen = load_musicgen()
    e = err()
    roles = {r for r in (musicgen.seed_role(s) for s in range(seed, seed + n)) if r}
    if roles:
        e.print(f"note: seeds {seed}..{seed + n - 1} overlap the {', '.join(sorted(roles))} seed range of the demo model "
                "(see fixtures/demo/README.md); pick --seed 5000000 or above for held-out songs", highlight=False, markup=False)
    progress = Progress(TextColumn("[bold]songs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=e, disable=no_progress)
    with progress:
        task = progress.add_task("", total=n)
        names = musicgen.make_songs(n, seed, out_dir, duration, workers,
                                    progress=lambda done, total: progress.update(task, completed=done))
    out().print(f"wrote {len(names)} songs ({duration:g} s each, 4 stems) to {out_dir}", highlight=False)
    e.print(f"list them: htx fixtures list --dir {out_dir}; use one in a config as `fixtures: [{out_dir}/{names[0]}.flac]`",
            highlight=False, markup=False)
