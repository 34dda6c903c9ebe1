"""The layout rule of the project guide, checked on the source: inside ``collector/`` no
import cycle, between modules nor between packages (imports inside functions count: they are
a dependency too), no module importing another module's private names, and every package
installed by pyproject.toml."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "collector"



def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def imports(module: str, path: Path) -> tuple[set[str], list[str]]:
    """The collector modules ``module`` imports, and its uses of their private names."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    bound: dict[str, str] = {}  # local name -> collector module
    uses: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "collector":
                    target = resolve(alias.name)
                    targets.add(target)
                    if alias.asname:
                        bound[alias.asname] = target
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "collector":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                target = full if full in MODULES else resolve(base)
                targets.add(target)
                if full in MODULES:
                    bound[alias.asname or alias.name] = full
                if private(alias.name) and target != module:
                    uses.append(f"{module}:{node.lineno} imports {alias.name} from {base}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in bound and private(node.attr)
                and bound[node.value.id] != module):
            uses.append(f"{module}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    targets.discard(module)
    targets.discard(None)
    return targets, uses


GRAPH = {module: imports(module, path) for module, path in MODULES.items()}


def cycle(needs: dict[str, set[str]]) -> list[str]:
    """One import cycle of the graph (its nodes, the first repeated at the end), or []."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return []
        stack.append(node)
        for target in sorted(needs.get(node, ())):
            if found := visit(target):
                return found
        stack.pop()
        done.add(node)
        return []

    for node in sorted(needs):
        if found := visit(node):
            return found
    return []


def test_no_import_cycle():
    assert cycle({module: targets for module, (targets, _) in GRAPH.items()}) == []


def unit(module: str) -> str:
    """The part of the architecture a module belongs to: its package under ``collector``
    (``collector.ingest``), or itself for a module at the top (``collector.sites``)."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_packages():
    """The folder tree reads as layers only if no package needs one that needs it back, as
    ingestion did the service that built its enrichment (issue 11)."""
    needs: dict[str, set[str]] = {}
    for module, (targets, _) in GRAPH.items():
        needs.setdefault(unit(module), set()).update(
            unit(target) for target in targets if unit(target) != unit(module))
    assert cycle(needs) == []


def test_no_module_imports_another_modules_private_names():
    uses = [use for _, found in GRAPH.values() for use in found]
    assert uses == []


def test_the_checks_see_what_they_look_for(tmp_path):
    """The checks above would see a cycle and a private import if there were one."""
    assert "collector.tag.serving" in GRAPH["collector.tag.demo"][0]
    assert "collector.service" in GRAPH["collector.tag.serving"][0]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    probe = tmp_path / "probe.py"
    probe.write_text("from collector.web.http import _private\nimport collector.files as f\n"
                     "f._x\n")
    _, uses = imports("collector.api.probe", probe)
    assert len(uses) == 2, uses


def test_every_package_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    packages = {module for module, path in MODULES.items() if path.name == "__init__.py"}
    assert packages - listed == set()


def uvicorn_protocol_uses(module: str, path: Path) -> list[str]:
    """Where ``module`` reaches uvicorn's protocol internals around the glue: an import of
    ``uvicorn.protocols``, or, in a class built on the glue's protocol, one of the
    attributes or methods the glue lists (asyncio's own protocol methods aside)."""
    from collector.web.uvicorn_protocol import UVICORN_INTERNALS

    internal = (set(UVICORN_INTERNALS["attributes"]) | set(UVICORN_INTERNALS["methods"])
                | set(UVICORN_INTERNALS["parser_callbacks"]))
    internal -= {"data_received", "connection_made", "connection_lost"}
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found += [f"{module}:{node.lineno} imports {name}" for name in names
                  if name.startswith("uvicorn.protocols")]
    protocols = {"UvicornProtocol", "LimitedProtocol", "IngestProtocol", "SqlProtocol"}
    for cls in ast.walk(tree):
        if not isinstance(cls, ast.ClassDef) or not any(
                (base.id if isinstance(base, ast.Name) else getattr(base, "attr", None))
                in protocols for base in cls.bases):
            continue
        for node in ast.walk(cls):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "self" and node.attr in internal):
                found.append(f"{module}:{node.lineno} uses self.{node.attr}")
            elif isinstance(node, ast.FunctionDef) and node.name in internal:
                found.append(f"{module}:{node.lineno} overrides {node.name}")
    return found


def test_only_the_glue_touches_uvicorns_protocol_internals(tmp_path):
    """collector/web/uvicorn_protocol.py is the one module that extends uvicorn's protocol
    through its internals (issue 11): every other module uses its API."""
    uses = [use for module, path in MODULES.items()
            if module != "collector.web.uvicorn_protocol"
            for use in uvicorn_protocol_uses(module, path)]
    assert uses == []
    probe = tmp_path / "probe.py"
    probe.write_text("from uvicorn.protocols.http import httptools_impl\n"
                     "class P(LimitedProtocol):\n    def on_url(self, url):\n"
                     "        self.cycle = self.transport\n")
    assert len(uvicorn_protocol_uses("collector.web.probe", probe)) == 4
