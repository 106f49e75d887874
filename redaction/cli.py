"""``evidence redact IN.mp4 OUT.mp4``: redact one file without running the service.

For a user with a single clip, or a reviewer checking what a job did: the request (a style, the
head option, or a whole request as the API takes it, with manual regions and exclusions) goes
through ``redaction.runner``, the same path a worker's job takes, under the same
``EVIDENCE_REDACTION_*`` settings. Nothing is stored and no custody entry is written: the input
is an ordinary file, and the output is the user's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(stderr=True)


def redact(
    src: Annotated[Path, typer.Argument(help="The clip to redact (read only)", metavar="IN.mp4")],
    dst: Annotated[Path, typer.Argument(help="Where to write the redacted copy (MP4)", metavar="OUT.mp4")],
    style: Annotated[
        Literal["solid", "blur", "pixelate"] | None,
        typer.Option(help="How faces are hidden (default: the service's setting)"),
    ] = None,
    heads: Annotated[bool, typer.Option("--heads", help="Hide whole heads, not only faces")] = False,
    record: Annotated[
        Path | None,
        typer.Option(help="Write the per-frame record of what was hidden here (JSON)", metavar="RECORD.json"),
    ] = None,
    spec: Annotated[
        Path | None,
        typer.Option(
            help="A redaction request as JSON (settings, manual_regions, exclusions, audio_edits)",
            metavar="SPEC.json",
        ),
    ] = None,
) -> None:
    """Redact faces (and any regions a request names) in one video file."""
    from storage.settings import WorkerSettings

    from .media import MediaError
    from .runner import redact_file
    from .spec import RedactionSpec

    if src.resolve() == dst.resolve():
        console.print("[red]the output must not overwrite the input[/red]")
        raise typer.Exit(2)
    try:
        request = json.loads(spec.read_text()) if spec else {}
        if style or heads:
            request.setdefault("settings", {})
            if style:
                request["settings"]["style"] = style
            if heads:
                request["settings"]["cover"] = "head"
        parsed = RedactionSpec.model_validate(request)
    except (OSError, ValueError, ValidationError) as exc:
        console.print(f"[red]bad request: {exc}[/red]")
        raise typer.Exit(2) from None
    columns = (
        TextColumn("redacting {task.fields[name]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("redact", total=None, name=src.name)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        try:
            result = redact_file(src, dst, parsed, WorkerSettings(), progress=progress)
        except (MediaError, ValueError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    if record:
        record.write_text(json.dumps(result.to_json(), separators=(",", ":")))
    console.print(
        f"{result.frames} frames, {result.tracks} face tracks, "
        f"{sum(1 for r in result.record if r)} frames with something hidden; "
        f"{result.speed_fps:.1f} frames a second -> {dst}"
    )
