"""The library's shape: imports run one way (no loops), and each layer imports only the layers below it.

    inversion.{atomic, provenance, paper, distributed}     import nothing of the project (paper: nothing at all)
    inversion.{data, bounds, estimators, digit_geometry, training}     the foundations
    inversion.models                          the models; never the pipeline or the reports
    inversion.pipeline                        params -> plan -> stages -> cache; never the reports
    inversion.reports                         summaries, claims, figures; never the pipeline
    chapters                                  call the pipeline and the reports

Read from the source (the ``import`` statements of every module, wherever they stand), not from what
happens to be imported at run time, so a loop hidden in a function body is found too.
"""

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"


def module_name(path: Path) -> str:
    parts = path.relative_to(LIB).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Every inversion.* module that ``path`` imports (resolving ``from inversion.x import y`` to inversion.x.y
    when y is a module)."""
    modules = {module_name(p) for p in LIB.rglob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("inversion")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("inversion"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in modules else node.module)
    me = module_name(path)
    return {m for m in out if m != me}


GRAPH = {module_name(p): project_imports(p) for p in sorted(LIB.rglob("*.py"))}


def test_no_import_loops():
    """Tarjan-free: repeatedly drop modules that import nothing left; whatever remains is on a loop."""
    graph = {m: {d for d in deps if d in GRAPH and d != "inversion"} for m, deps in GRAPH.items()}
    graph.pop("inversion", None)
    while True:
        leaves = [m for m, deps in graph.items() if not deps]
        if not leaves:
            break
        for m in leaves:
            del graph[m]
        for deps in graph.values():
            deps.difference_update(leaves)
    assert not graph, f"modules on an import loop: {sorted(graph)}"


@pytest.mark.parametrize("package,forbidden", [
    ("inversion.models", ("inversion.pipeline", "inversion.reports")),
    ("inversion.pipeline", ("inversion.reports",)),
    ("inversion.reports", ("inversion.pipeline", "inversion.models", "inversion.training")),
    ("inversion.paper", ("inversion",)),
    ("inversion.atomic", ("inversion",)),
    ("inversion.distributed", ("inversion",)),
])
def test_layers_import_downwards_only(package, forbidden):
    for module, deps in GRAPH.items():
        if module == package or module.startswith(package + "."):
            bad = sorted(d for d in deps if any(d == f or d.startswith(f + ".") for f in forbidden))
            assert not bad, f"{module} imports {bad}"


def test_the_model_never_imports_its_samplers():
    assert "inversion.models.sampling" not in GRAPH["inversion.models.pixelcnn"]
    assert "inversion.models.pixelcnn" in GRAPH["inversion.models.sampling"]


def test_stage_modules_import_only_the_core_and_the_chapters_they_build_on():
    core = {"inversion.pipeline.schema", "inversion.pipeline.params", "inversion.pipeline.cache",
            "inversion.pipeline.common"}
    allowed = {
        "background": set(), "layers": set(), "architectures": {"layers"}, "dynamics": {"layers"},
        "estimators": {"layers", "dynamics"}, "inverters": {"layers"},
    }
    for chapter, builds_on in allowed.items():
        deps = {d for d in GRAPH[f"inversion.pipeline.{chapter}"] if d.startswith("inversion.pipeline")}
        extra = deps - core - {f"inversion.pipeline.{b}" for b in builds_on}
        assert not extra, f"inversion.pipeline.{chapter} imports {sorted(extra)}"


def test_only_the_command_line_knows_the_engine():
    """Stages and plans know nothing of how they are run: Dask is the command line's business."""
    users = sorted(m for m, deps in GRAPH.items() if "inversion.pipeline.engine" in deps)
    assert users == ["inversion.pipeline.__main__"], users


def test_no_module_is_huge():
    """A module is read in one sitting: none of the library's files passes 800 lines."""
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in LIB.rglob("*.py")}
    assert max(sizes.values()) <= 800, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
