"""What every ``evidence`` command shares: where it prints, and the service's parts it works on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from storage.errors import Refused

from .settings import get_settings

if TYPE_CHECKING:
    from .services import Services

console = Console(stderr=True)
out = Console()


def services(*, existing: bool = False) -> Services:
    """The service's parts; ``existing``: a command that works on the service's data, which must be
    there already (rather than a fresh, empty service made in the current directory)."""
    from .logging_setup import configure_logging
    from .services import build_services

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    database = Path(settings.data_dir) / "evidence.db"
    if settings.database_url is None and not database.exists():
        where = Path(settings.data_dir).resolve()
        if existing:
            console.print(
                f"[red]no service data at {where}[/red]: run this in the directory the service runs in, "
                "or set EVIDENCE_DATA_DIR (or EVIDENCE_DATABASE_URL and EVIDENCE_S3_ENDPOINT) to the service's"
            )
            raise typer.Exit(2)
        console.print(
            f"[yellow]no service data at {where}: starting a new service's data there[/yellow] (to use an "
            "existing service, run this in its directory or set EVIDENCE_DATA_DIR)"
        )
    return build_services(settings)


@contextmanager
def refusing(*, existing: bool = False) -> Iterator[Services]:
    """The service's parts for a command that may be refused (an account that exists, a repair the
    ledger does not bear out): the refusal is printed and the command exits 2; the parts are closed."""
    s = services(existing=existing)
    try:
        yield s
    except Refused as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    finally:
        s.close()
