"""Print the README's configuration table from ``storage/settings.py`` (its fields and their comments).

``python scripts/settings_doc.py`` prints the table; ``tests/test_readme.py`` checks that the
README holds exactly this table, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCE = ROOT / "storage" / "settings.py"
SECRET_NOTE = " (secret: never logged)"


def rows() -> list[tuple[str, str, str]]:
    from storage.settings import Settings

    lines = SOURCE.read_text().splitlines()
    tree = ast.parse(SOURCE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    out: list[tuple[str, str, str]] = []
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        comment: list[str] = []
        i = node.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            comment.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        text = " ".join(comment)
        field = Settings.model_fields[name]
        default = field.default
        if hasattr(default, "get_secret_value"):
            shown = "(empty)" if not default.get_secret_value() else "(set)"
        elif default is None:
            shown = "(unset)"
        else:
            shown = f"`{default}`"
        annotation = ast.get_source_segment(SOURCE.read_text(), node.annotation) or ""
        if "SecretStr" in annotation:
            text += SECRET_NOTE
        out.append((f"`EVIDENCE_{name.upper()}`", shown, text.strip()))
    return out


def table() -> str:
    body = ["| variable | default | meaning |", "|---|---|---|"]
    body += [f"| {a} | {b} | {c} |" for a, b, c in rows()]
    return "\n".join(body)


if __name__ == "__main__":
    print(table())
