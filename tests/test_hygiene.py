"""Project hygiene (issue 6, items 18 and 19): every third-party import is a declared
dependency, and the README stands on its own in a user's clone."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared(names: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", n, 1)[0].lower().replace("_", "-") for n in names}


def _imports(folder: Path) -> dict[str, str]:
    """Top-level module -> first file importing it (inside functions too), stdlib excluded."""
    found: dict[str, str] = {}
    # Test helpers import each other by bare name (tests/e2e is put on sys.path); the package
    # itself always imports as cxrjobs.* (so cxrjobs/backends/kubernetes never hides `kubernetes`).
    own = {p.stem for p in folder.rglob("*.py")} if folder.name == "tests" else set()
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                local = top in own  # a helper module of the folder itself (tests/e2e/e2e_plan.py)
                if top not in sys.stdlib_module_names and top != "cxrjobs" and not local:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _declared(project["dependencies"])
    test_extra = runtime | _declared(project["optional-dependencies"]["test"])
    dists = packages_distributions()
    problems = []
    for folder, declared in (("cxrjobs", runtime), ("tests", test_extra)):
        for module, where in _imports(ROOT / folder).items():
            owners = {d.lower().replace("_", "-") for d in dists.get(module, [])}
            if not owners:
                problems.append(f"{where}: imports {module!r}, which no installed distribution provides")
            elif not owners & declared:
                problems.append(f"{where}: imports {module!r} from {sorted(owners)}, not declared in "
                                f"pyproject.toml ({'dependencies' if folder == 'cxrjobs' else 'test extras'})")
    assert not problems, "\n".join(problems)


def test_readme_carries_its_own_roadmap():
    text = (ROOT / "README.md").read_text()
    assert "../shared/ROADMAP" not in text and "shared/ROADMAP.md" not in text
    section = text.split("\n## Roadmap", 1)[1].split("\n## ", 1)[0]
    items = [l for l in section.splitlines() if re.match(r"\s*(\d+\.|-)\s+\*\*", l)]
    assert len(items) >= 5, section
