"""The import rules of docs/design/layers.md: lower layers never import higher ones, so there are no cycles."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOUNDATION = {
    "nvr.config",
    "nvr.clock",
    "nvr.errors",
    "nvr.db",
    "nvr.models",
    "nvr.registry",
    "nvr.status",
    "nvr.cluster",
}
# module prefix -> prefixes it must not import
FORBIDDEN = {
    "nvr.foundation": (
        "storage",
        "integrity",
        "retention",
        "api",
        "nvr.recorder",
        "nvr.cli",
        "nvr.runtime",
        "nvr.demo",
    ),
    "integrity": ("storage", "retention", "api", "nvr.recorder", "nvr.cli", "nvr.runtime", "nvr.demo"),
    "storage": ("retention", "api", "nvr.recorder", "nvr.cli", "nvr.runtime", "nvr.demo"),
    "retention": ("api", "nvr.recorder", "nvr.cli", "nvr.runtime", "nvr.demo"),
    "nvr.demo": ("api", "nvr.recorder", "nvr.cli", "storage", "retention", "integrity"),
    "nvr.recorder": ("api", "nvr.cli", "nvr.runtime"),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _layer(module: str) -> str | None:
    if module in FOUNDATION:
        return "nvr.foundation"
    for prefix in ("integrity", "storage", "retention", "nvr.demo", "nvr.recorder"):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


def test_lower_layers_never_import_higher_ones() -> None:
    violations = []
    files = [p for pkg in ("nvr", "storage", "integrity", "retention", "api") for p in (ROOT / pkg).rglob("*.py")]
    assert len(files) > 10
    for path in files:
        module = _module_name(path)
        layer = _layer(module)
        if layer is None:
            continue
        for imp in _imports(path):
            if any(imp == bad or imp.startswith(bad + ".") for bad in FORBIDDEN[layer]):
                violations.append(f"{module} imports {imp}")
    assert violations == []
