"""Print the README's configuration table from ``storage/settings.py``: its sections, and each field's
description and default.

``python scripts/settings_doc.py`` prints the table; ``tests/test_readme.py`` checks that the
README holds exactly this table, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECRET_NOTE = " (secret: never logged)"


def rows() -> list[tuple[str, str, str]]:
    from storage.settings import SECTIONS

    out: list[tuple[str, str, str]] = []
    for title, section in SECTIONS:
        out.append((f"**{title}**", "", ""))
        for name in section.__annotations__:
            field = section.model_fields[name]
            default = field.default
            if isinstance(default, SecretStr):
                shown = "(empty)" if not default.get_secret_value() else "(set)"
            elif default is None:
                shown = "(unset)"
            else:
                shown = f"`{default}`"
            text = field.description or ""
            if "SecretStr" in str(section.__annotations__[name]):
                text += SECRET_NOTE
            out.append((f"`EVIDENCE_{name.upper()}`", shown, text.strip()))
    return out


def table() -> str:
    body = ["| variable | default | meaning |", "|---|---|---|"]
    body += [f"| {a} | {b} | {c} |" for a, b, c in rows()]
    return "\n".join(body)


if __name__ == "__main__":
    print(table())
