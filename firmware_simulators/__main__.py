"""Command line for the simulators: ``python -m firmware_simulators dock|camera-keygen|camera-close``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from firmware_simulators.camera import CameraIdentity, record_clip
from firmware_simulators.dock import Dock, DockQueue
from firmware_simulators.tus import RetryPolicy

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Device simulators that speak the public protocols."
)


@app.command("camera-keygen")
def camera_keygen(
    serial: Annotated[str, typer.Option(help="Camera serial, as it will be enrolled.")],
    out: Annotated[Path, typer.Option(help="Key file to write (mode 0600).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing key file.")] = False,
) -> None:
    """Make a camera key; prints the base64 public key to enrol."""
    identity = CameraIdentity.generate(serial)
    identity.save(out, overwrite=overwrite)
    typer.echo(json.dumps({"serial": serial, "public_key": identity.public_key_b64(), "key_file": str(out)}))


@app.command("camera-close")
def camera_close(
    clip: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Finished clip file.")],
    key: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Camera key file.")],
    wearer: Annotated[str, typer.Option(help="Staff number of the wearer.")],
    start: Annotated[str, typer.Option(help="Recording start, RFC 3339 UTC, e.g. 2026-11-22T14:00:00Z.")],
    stop: Annotated[str, typer.Option(help="Recording stop, RFC 3339 UTC.")],
    filename: Annotated[
        str | None, typer.Option(help="Name sent to the service (default: camera convention).")
    ] = None,
) -> None:
    """Hash and sign a finished clip, leaving CLIP.manifest.json next to it for a dock."""
    recorded = record_clip(CameraIdentity.load(key), clip, wearer, start, stop, filename)
    typer.echo(json.dumps({"sidecar": str(recorded.sidecar_path), "manifest": recorded.manifest}))


@app.command("dock")
def dock(
    folder: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="Folder of clips with sidecars.")
    ],
    url: Annotated[str, typer.Option(help="Service base URL, e.g. http://127.0.0.1:8000.")],
    token: Annotated[str, typer.Option(envvar="DOCK_TOKEN", help="Dock token <dock_id>.<secret>.")],
    state: Annotated[
        Path | None, typer.Option(help="State file (default: <folder>/.dock-state.json).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Concurrent uploads.")] = 2,
    chunk_size: Annotated[
        int | None, typer.Option(min=1, help="Bytes per PATCH (default: one PATCH).")
    ] = None,
    checksum: Annotated[bool, typer.Option(help="Send Upload-Checksum with each chunk.")] = True,
    max_attempts: Annotated[int, typer.Option(min=1, help="Failures in a row before giving up.")] = 8,
    max_elapsed: Annotated[float, typer.Option(help="Seconds of failing in a row before giving up.")] = 300.0,
) -> None:
    """Upload every clip in FOLDER; restart it with the same state file to resume."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    retry = RetryPolicy(max_attempts=max_attempts, max_elapsed_s=max_elapsed)
    with Dock(url, token, chunk_size=chunk_size, checksum=checksum, retry=retry) as station:
        queue = DockQueue(station, folder, state or folder / ".dock-state.json", workers=workers)
        report = queue.run()
    for key, result in sorted(report.results.items()):
        typer.echo(
            json.dumps(
                {
                    "clip": key,
                    "upload_url": result.upload_url,
                    "evidence_item_id": result.evidence_item_id,
                    "evidence_status": result.evidence_status,
                    "resumes": result.resumes,
                    "attempts": result.attempts,
                }
            )
        )
    for key, why in sorted(report.failures.items()):
        typer.echo(json.dumps({"clip": key, "error": why}), err=True)
    if report.failures:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
