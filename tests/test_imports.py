"""The package's import graph: configuration is read without the model stack, and the layers below the
trainer (config, models, ops) import one another in one direction only."""
import ast
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "eve_ms")


def _modules() -> dict:
    """module name -> file, for every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def import_graph() -> dict:
    """module -> the package modules it imports, at the top or inside a function (a lazy import is still a
    dependency: `EveConfig.param_counts` importing the models made config.py depend on the whole stack)."""
    modules = _modules()

    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                node.body = []  # imports for annotations only: no dependency when the code runs
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(resolve(a.name) for a in node.names if a.name.startswith("eve_ms"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("eve_ms"):
                targets.update(resolve(f"{node.module}.{a.name}") for a in node.names)
        graph[module] = targets - {module, None}
    return graph


def reachable(graph: dict, start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_configuration_modules_depend_on_no_model_and_are_in_no_import_cycle():
    # (eve_ms.training.config is left out: at load it asks ops.fused whether the fused ops can run on the target)
    graph = import_graph()
    for module in ("eve_ms.config", "eve_ms.training.trainable", "eve_ms.data.config"):
        below = reachable(graph, module)
        assert not {m for m in below if m.startswith(("eve_ms.models", "eve_ms.training.stages"))}, (module, below)
        assert module not in below, f"{module} imports itself through {sorted(below)}"


def test_the_models_and_ops_import_nothing_that_imports_them():
    graph = import_graph()
    for module in graph:
        if module.startswith(("eve_ms.models", "eve_ms.ops")):
            assert module not in reachable(graph, module), module


def test_loading_configuration_imports_neither_mindspore_nor_mindformers():
    code = ("import sys; import eve_ms.config, eve_ms.training.config, eve_ms.training.trainable, eve_ms.data.config; "
            "import eve_ms.training.sections; "
            "print(sorted(m for m in ('mindspore', 'mindformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_no_module_of_the_package_imports_itself_through_others():
    graph = import_graph()
    assert sorted(module for module in graph if module in reachable(graph, module)) == []
