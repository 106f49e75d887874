"""Every package the product imports is one ``pyproject.toml`` declares.

A package that only arrives as another one's dependency (``urllib3`` with ``minio``, ``starlette``
and ``anyio`` with ``fastapi``) can leave with that one's next release, or change under code that
subclasses its classes, with nothing in the project saying it was needed. What runs the service
declares what it imports: a runtime dependency, one installed without its own dependencies
(``[tool.evidence]``), or, for the simulators alone, their optional extra.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.test_architecture import PRODUCT, ROOT

SIMULATORS = ("firmware_simulators",)
SERVICE = (*(p for p in PRODUCT if p not in SIMULATORS), "demo")


def _name(requirement: str) -> str:
    """The distribution a requirement names, normalised (PEP 503)."""
    name = re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported(packages: tuple[str, ...]) -> dict[str, str]:
    """Each third-party top-level module the packages import, with one place that imports it."""
    ours = {*SERVICE, *SIMULATORS}
    found: dict[str, str] = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in ours and top not in sys.stdlib_module_names:
                        found.setdefault(top, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def _undeclared(packages: tuple[str, ...], declared: set[str]) -> dict[str, str]:
    distributions = importlib.metadata.packages_distributions()
    return {
        module: where
        for module, where in _imported(packages).items()
        if not {_name(d) for d in distributions.get(module, [module])} & declared
    }


def test_the_service_declares_every_package_it_imports() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = {_name(r) for r in project["project"]["dependencies"]}
    declared |= {_name(r) for r in project["tool"]["evidence"]["install-without-dependencies"]}
    assert _undeclared(SERVICE, declared) == {}
    simulators = declared | {_name(r) for r in project["project"]["optional-dependencies"]["simulators"]}
    assert _undeclared(SIMULATORS, simulators) == {}
