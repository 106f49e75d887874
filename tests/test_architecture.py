"""The structure keeps its rules: no import circle anywhere, no product module too long to read,
the private ``minio`` calls the object store relies on are still there, with the same shape, the
error envelope is written in one place, every retry follows a named policy, and the foundations
are type-checked strictly."""

from __future__ import annotations

import ast
import inspect
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grimp
from minio import Minio

from chain_of_custody.entries import CustodyAction

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = (
    "storage",
    "chain_of_custody",
    "accounts",
    "devices",
    "incidents",
    "redaction",
    "alarms",
    "console",
    "ingest",
    "firmware_simulators",
)
MAX_LINES = 800


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan), and modules importing themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.find_modules_directly_imported_by(node):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1 or node in graph.find_modules_directly_imported_by(node):
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_circle_anywhere() -> None:
    graph = grimp.build_graph(*PRODUCT, include_external_packages=False)
    assert _cycles(graph) == []


def test_a_circle_would_be_found() -> None:
    """The check itself: a graph with a circle in it is reported."""
    graph = grimp.ImportGraph()
    for a, b in (("x.a", "x.b"), ("x.b", "x.c"), ("x.c", "x.a"), ("x.c", "x.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["x.a", "x.b", "x.c"]]


def test_no_product_module_is_too_long() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for package in PRODUCT
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_private_minio_calls_keep_their_shape() -> None:
    """``storage.objects`` streams clips through ``minio``'s multipart calls and builds unsigned
    bodies by overriding ``_build_headers``: private API, pinned by the exact version in
    ``pyproject.toml`` and by this test, which fails on an upgrade that changes them."""
    expected = {
        "_create_multipart_upload": ["self", "bucket_name", "object_name", "headers"],
        "_upload_part": ["self", "bucket_name", "object_name", "data", "headers", "upload_id", "part_number"],
        "_complete_multipart_upload": ["self", "bucket_name", "object_name", "upload_id", "parts", "ssec"],
        "_abort_multipart_upload": ["self", "bucket_name", "object_name", "upload_id"],
        "_build_headers": ["self", "host", "headers", "body", "creds"],
    }
    found = {name: list(inspect.signature(getattr(Minio, name)).parameters) for name in expected}
    assert found == expected
    pinned = [line for line in (ROOT / "pyproject.toml").read_text().splitlines() if '"minio' in line]
    assert pinned == ['  "minio==7.2.20",']


ENVELOPE_HOMES = {"storage/errors.py", "ingest/errors.py"}


def test_the_error_envelope_is_made_in_one_place() -> None:
    """Every error answer is ``{"error", "reason", "detail"}``: a refusal makes it
    (``storage.errors.Refused.envelope``) or the one handler does (``ingest.errors.envelope``), never
    a dictionary of those keys written out again elsewhere, which would drift from them."""
    written = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for package in PRODUCT
        for path in (ROOT / package).rglob("*.py")
        if str(path.relative_to(ROOT)) not in ENVELOPE_HOMES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Dict)
        and {"error", "reason", "detail"} <= {k.value for k in node.keys if isinstance(k, ast.Constant)}
    ]
    assert written == []


def test_every_refusal_is_a_refused() -> None:
    """A route refuses with a :class:`storage.errors.Refused` subclass (the generic ones by status,
    ``NotFound``, ``NotPermitted``..., or a domain's own), never with FastAPI's ``HTTPException``:
    one family, one handler, a machine code on every refusal. ``ingest/errors.py`` still answers
    the ``HTTPException`` Starlette raises itself (no route for a path or method)."""
    raised = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for package in PRODUCT
        for path in (ROOT / package).rglob("*.py")
        if str(path.relative_to(ROOT)) != "ingest/errors.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "HTTPException"
    ]
    assert raised == []


# mypy's ``--strict`` flags that may be set per module (``warn_unused_configs`` is global only).
STRICT_FLAGS = {
    "disallow_untyped_defs",
    "disallow_incomplete_defs",
    "disallow_untyped_calls",
    "disallow_untyped_decorators",
    "disallow_any_generics",
    "disallow_subclassing_any",
    "warn_return_any",
    "no_implicit_reexport",
    "strict_equality",
    "extra_checks",
}


def test_the_foundations_and_the_alarm_rules_are_checked_strictly() -> None:
    """``storage``, ``chain_of_custody`` and the pure alarm rules are held to every flag of mypy's
    strict mode (the rest of the product to the global ones, which include ``check_untyped_defs``)."""
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    strict = next(o for o in mypy["overrides"] if "storage.*" in o["module"])
    assert {"storage.*", "chain_of_custody.*", "alarms.rules"} <= set(strict["module"])
    assert {flag for flag in STRICT_FLAGS if strict.get(flag) is True} == STRICT_FLAGS
    assert mypy["check_untyped_defs"] and mypy["warn_unused_ignores"] and mypy["warn_redundant_casts"]


RETRY_HOME = "storage/retries.py"


def test_every_retry_follows_a_named_policy_in_one_place() -> None:
    """In-process retries use ``tenacity`` through the named policies of ``storage.retries`` (one a
    purpose): no other product module builds its own from ``tenacity``."""
    importing = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for package in PRODUCT
        for path in (ROOT / package).rglob("*.py")
        if str(path.relative_to(ROOT)) != RETRY_HOME
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tenacity")
        or (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tenacity" for a in node.names))
    ]
    assert importing == []


def _action_slots() -> dict[str, int]:
    """Every product function or method with a parameter named ``action``: its name and where that
    parameter stands among the arguments of a call (``self`` not counted)."""
    slots: dict[str, int] = {}
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    names = [a.arg for a in node.args.posonlyargs + node.args.args]
                    if "action" in names:
                        slots[node.name] = names.index("action") - (names[:1] in (["self"], ["cls"]))
    return slots


def _product_nodes() -> Iterator[tuple[Path, ast.AST]]:
    """Every syntax node of the product's modules (migrations apart: they keep their history)."""
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                for node in ast.walk(ast.parse(path.read_text())):
                    yield path, node


def _literals(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _literals(node.body) + _literals(node.orelse)
    return []


def test_custody_actions_are_named_by_the_enum() -> None:
    """A custody action is passed as a :class:`chain_of_custody.entries.CustodyAction` member, never
    as a bare string, so a misspelt action fails where it is written (the enum's values are what
    is stored and signed)."""
    actions = {a.value for a in CustodyAction}
    slots = _action_slots()
    assert {"append", "record_device", "add"} <= set(slots)
    bare = [
        f"{path.relative_to(ROOT)}:{node.lineno} {value!r}"
        for path, node in _product_nodes()
        if isinstance(node, ast.Call)
        and (name := getattr(node.func, "id", getattr(node.func, "attr", None))) in slots
        for arg in [
            *node.args[slots[name] : slots[name] + 1],
            *(k.value for k in node.keywords if k.arg == "action"),
        ]
        for value in _literals(arg)
        if value in actions
    ]
    assert bare == []


def _names_an_action(node: ast.expr) -> bool:
    """``x.action``, ``action``, ``entry.get("action")`` or ``entry["action"]``."""
    if isinstance(node, ast.Attribute | ast.Name):
        return getattr(node, "attr", getattr(node, "id", None)) == "action"
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "get" and node.args:
        return isinstance(node.args[0], ast.Constant) and node.args[0].value == "action"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "action"
    return False


def _strings_in(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [value for element in node.elts for value in _strings_in(element)]
    return []


def test_custody_actions_are_compared_by_the_enum() -> None:
    """An entry's action is tested against a :class:`CustodyAction` member, never a bare string, so
    a misspelt action in a replay, a check or a query fails where it is written instead of never
    matching (the sibling of the rule above for reading entries back)."""
    actions = {a.value for a in CustodyAction}
    bare = [
        f"{path.relative_to(ROOT)}:{node.lineno} {value!r}"
        for path, node in _product_nodes()
        if isinstance(node, ast.Compare) and any(_names_an_action(s) for s in [node.left, *node.comparators])
        for side in [node.left, *node.comparators]
        for value in _strings_in(side)
        if value in actions
    ]
    assert bare == []


def _counts_rows(node: ast.expr) -> bool:
    """``f"{n} thing(s) ..."``: a note that opens with how many rows it speaks of."""
    return (
        isinstance(node, ast.JoinedStr)
        and len(node.values) > 1
        and isinstance(node.values[0], ast.FormattedValue)
        and isinstance(node.values[1], ast.Constant)
        and "(s)" in str(node.values[1].value).split(",")[0]
    )


def test_a_count_of_rows_not_held_to_a_seal_is_noted_by_one_helper() -> None:
    """A check's note on rows it could not hold to their seal (``"3 device(s) have no seal yet
    ..."``) is added by :func:`chain_of_custody.entries.report_unsealed`, never appended to a
    report's notes by hand, so every such note is said the same way and only when there are any."""
    by_hand = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, node in _product_nodes()
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "append"
        and getattr(node.func.value, "attr", None) == "notes"
        and any(_counts_rows(arg) for arg in node.args)
    ]
    assert by_hand == []


def test_settings_are_typed_wherever_they_are_passed() -> None:
    """A parameter that takes the settings (``settings``, ``*_settings``) is annotated with a
    ``Settings`` class, never ``Any`` or nothing, so mypy checks every field read from it."""
    untyped = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({arg.arg})"
        for path, node in _product_nodes()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        if arg.arg == "settings" or arg.arg.endswith("_settings")
        if arg.annotation is None or "Settings" not in ast.unparse(arg.annotation)
    ]
    assert untyped == []
