"""The import layers of docs/design.md, checked on the source: every module's imports (those inside functions
included) point to its own layer or one below, and the configuration imports nothing heavy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import scorefast

PACKAGE = Path(scorefast.__file__).parent

# bottom to top; a module may import its own layer and the layers below (docs/design.md, "Layers")
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundations", ("scorefast", "errors", "checkpoint", "registry", "choices", "dataformats")),
    ("the engine", ("sde", "nets", "weightings", "time_sampling", "couplings", "objective", "time_grids",
                    "ksampling", "sampling", "likelihood", "analytic", "estimators")),
    ("the methods", ("methods",)),
    ("the configuration", ("config",)),
    ("runs and results", ("run", "posthoc_ema", "evaluate", "data", "datafiles", "metrics", "fid", "plots")),
    ("training", ("training", "distributed")),
    ("studies", ("bench", "sweep")),
    ("front ends", ("cli", "demo", "__main__")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The index in LAYERS of a module by its first name below the package (the package itself: foundations)."""
    first = module.split(".")[1] if "." in module else "scorefast"
    return next(i for i, (_, names) in enumerate(LAYERS) if first in names)


def imports(path: Path) -> set[str]:
    """Every scorefast module or package the file imports, at any depth of its code."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "scorefast"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "scorefast":
                out |= {f"{target}.{a.name}" if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).is_dir()
                        or (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                        else target for a in node.names}
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert len(MODULES) > 50
    for path in MODULES:
        layer_of(module_name(path))


def test_no_import_points_up_a_layer():
    wrong = [f"{module_name(p)} ({LAYERS[layer_of(module_name(p))][0]}) imports {target} "
             f"({LAYERS[layer_of(target)][0]})" for p in MODULES for target in sorted(imports(p))
             if layer_of(target) > layer_of(module_name(p))]
    assert wrong == []


def test_a_plugin_module_imports_no_other_plugin_module_and_nobody_imports_the_worker():
    plugins = {"scorefast.methods.targets", "scorefast.methods.priors", "scorefast.methods.partitions"}
    for path in MODULES:
        name = module_name(path)
        if name in plugins:
            assert imports(path) & (plugins - {name}) == set(), name
        assert "scorefast.distributed" not in imports(path), name


def test_the_layer_table_of_design_md_names_every_layer():
    design = (PACKAGE.parents[1] / "docs" / "design.md").read_text()
    table = design[design.index("## Layers"):design.index("## The loop")]
    for title, names in LAYERS:
        row = next(line for line in table.splitlines() if line.startswith(f"| {title} |"))
        assert all(f"`{n}" in row for n in names if n not in ("scorefast", "__main__")), title


def test_the_configuration_imports_no_torch():
    code = "import sys, scorefast.config; print(sorted({'torch', 'numpy', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
