"""The core's layout: one folder per job, imports one way, nothing of ComfyUI or the nodes.

Each folder (part) of echoreel_core says in its docstring what it may import, on a line
`May import: a, b.` (or `nothing else of the core`, or `any part ...`). These tests read those
lines and check every import of every module against them (lazy ones inside functions too), that
the parts form layers (no cycle, so imports go one way), that the top level holds only the entry
points and the old paths kept for scripts, and that those old paths are the new modules and are
used by nothing in the repository. tests/test_pipeline.py imports every module and checks that
no ComfyUI module was loaded."""

from __future__ import annotations

import ast
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE = ROOT / "echoreel_core"
ENTRY_POINTS = {"demo", "convert", "train"}  # python -m echoreel_core.<name>
OLD_PATHS = {"checkpoints": "loading.checkpoints", "pipeline": "pipelines.generate"}  # for scripts only
ENTRY_FILES = {"cli.py", "__main__.py"}  # a part's own command line: an entry point too
HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "node_helpers", "latent_preview", "nodes",
                "server", "execution")


def parts() -> list[str]:
    return sorted(p.name for p in CORE.iterdir() if (p / "__init__.py").is_file())


def allowed_imports() -> dict[str, set[str] | None]:
    """Each part's `May import:` line: the parts it names, an empty set, or None for any part."""
    allowed = {}
    for part in parts():
        doc = ast.get_docstring(ast.parse((CORE / part / "__init__.py").read_text())) or ""
        match = re.search(r"^May import: (.*?)(?:\.|\s\(.*)?$", doc, re.MULTILINE)
        assert match, f"echoreel_core/{part}/__init__.py: its docstring needs a `May import: ...` line"
        text = match.group(1)
        if text.startswith("nothing"):
            allowed[part] = set()
        elif text.startswith("any part"):
            allowed[part] = None
        else:
            allowed[part] = {name.strip() for name in text.split(",")}
            unknown = allowed[part] - set(parts())
            assert not unknown, f"echoreel_core/{part}: `May import` names {sorted(unknown)}, which are no parts"
    return allowed


def imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative ones resolved."""
    package = list(path.relative_to(ROOT).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            # `from . import x`: x may be a module of its own
            found += [(node.lineno, f"{name}.{alias.name}" if not node.module else name) for alias in node.names]
    return found


def core_modules() -> list[pathlib.Path]:
    return sorted(p for p in CORE.rglob("*.py") if "shipped" not in p.relative_to(CORE).parts)


def test_every_import_follows_its_parts_rule():
    allowed = allowed_imports()
    wrong = []
    for path in core_modules():
        where = path.relative_to(CORE).parts
        if len(where) == 1 or path.name in ENTRY_FILES:
            continue  # entry points sit on top: any part (the host and the nodes are checked below)
        part = where[0]
        for line, name in imports(path):
            words = name.split(".")
            if words[0] != "echoreel_core" or len(words) < 2 or words[1] == part:
                continue
            other = words[1]
            if other in OLD_PATHS:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}: use echoreel_core.{OLD_PATHS[other]}")
            elif other in ENTRY_POINTS and allowed[part] is not None:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports the entry point {name}")
            elif allowed[part] is not None and other not in allowed[part]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {part} imports {name}, but `May import` of "
                             f"echoreel_core/{part} names only {', '.join(sorted(allowed[part])) or 'nothing'}")
    assert not wrong, "\n".join(wrong)


def test_the_parts_form_layers():
    """No cycle among the parts' rules: imports go one way. models never import loading or training."""
    allowed = allowed_imports()
    rules = {part: (set(parts()) - {part} if names is None else names) for part, names in allowed.items()}
    layered, left = [], dict(rules)
    while left:
        ready = sorted(part for part, names in left.items() if names <= set(layered))
        assert ready, f"a cycle among {sorted(left)}: {({p: sorted(n) for p, n in left.items()})}"
        layered += ready
        for part in ready:
            del left[part]
    assert not rules["models"] & {"loading", "training"}
    assert layered[-1] == "toy"  # only the toy sits on top


def test_the_core_never_imports_the_host_or_the_nodes():
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}" for path in core_modules()
             for line, name in imports(path) if name.split(".")[0] in HOST_MODULES]
    assert not wrong, "\n".join(wrong)


def test_the_top_level_holds_the_entry_points_and_the_old_paths_only():
    top = {p.stem for p in CORE.glob("*.py")} - {"__init__"}
    assert top == ENTRY_POINTS | set(OLD_PATHS), f"{sorted(top - ENTRY_POINTS - set(OLD_PATHS))}: put it in a part"


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_paths_are_the_new_modules_and_unused_in_the_repository(old):
    assert importlib.import_module(f"echoreel_core.{old}") is importlib.import_module(f"echoreel_core.{OLD_PATHS[old]}")
    pattern = re.compile(rf"echoreel_core(\.|\s+import\s+){old}\b")
    files = [p for folder in ("echoreel_core", "nodes", "tests", "bench", "scripts") for p in (ROOT / folder).rglob("*.py")]
    users = [str(p.relative_to(ROOT)) for p in files
             if p.name != "test_layout.py" and p.relative_to(ROOT) != pathlib.Path(f"echoreel_core/{old}.py")
             and pattern.search(p.read_text())]
    assert not users, f"{users} use echoreel_core.{old}: use echoreel_core.{OLD_PATHS[old]}"
