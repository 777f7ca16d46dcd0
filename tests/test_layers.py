"""The package's layers (docs/architecture.md, "Layers") as a test: a module imports only modules of
its own layer or of layers below it, at module level or inside a function."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "htsrl_aio"

# Top to bottom; a name is a module or a package of htsrl_aio. Keep in step with docs/architecture.md.
LAYERS = [
    ("cli", "__main__"),
    ("training", "stop_signals", "tune", "sweep"),
    ("trainer", "evaluate", "export"),
    ("checkpointing",),
    ("assembly",),
    ("runtime", "outputs"),
    ("algos", "models", "distributions"),
    ("backends",),
    ("envs",),
    ("checkpoint", "ipc", "steps", "seeding", "config", "presets", "errors"),
]


def layer_of(module: str) -> int:
    """The layer of a dotted module name below htsrl_aio (`runtime.scheduler` -> runtime's)."""
    top = module.split(".")[0]
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"htsrl_aio.{module} belongs to no layer: add it to LAYERS and to the doc")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module below htsrl_aio) of every import of the package in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "htsrl_aio":
            if node.module == "htsrl_aio":  # `from htsrl_aio import checkpoint`: the submodules named
                found += [(node.lineno, alias.name) for alias in node.names]
            else:
                found.append((node.lineno, node.module.removeprefix("htsrl_aio.")))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.removeprefix("htsrl_aio."))
                      for alias in node.names if alias.name.startswith("htsrl_aio.")]
    return found


def test_every_module_imports_only_its_own_layer_or_below():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        if relative.name == "__init__" and len(relative.parts) == 1:
            continue  # the public API re-exports from every layer, lazily
        module = ".".join(relative.parts)
        for line, imported in imports_of(path):
            if layer_of(imported) < layer_of(module):
                violations.append(f"htsrl_aio/{relative}.py:{line} imports htsrl_aio.{imported}")
    assert not violations, "imports that point up a layer:\n" + "\n".join(violations)


def test_the_layers_name_every_module():
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).with_suffix("")
        if relative.parts != ("__init__",):
            layer_of(".".join(relative.parts))
