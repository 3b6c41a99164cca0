"""The package's structure: no import cycles, ops stand alone, files stay small.

The import graph is read from the source (AST), imports inside functions included: a cycle that
only closes at call time still ties the modules together for a reader and for refactoring.
"""

import ast
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "ban_jax"
MAX_LINES = 450


def _modules() -> dict[str, str]:
  """{dotted module name: path} for every .py file of the package."""
  out = {}
  root = os.path.join(REPO, PACKAGE)
  for folder, _, files in os.walk(root):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join(parts)] = path
  return out


def _is_package(module: str, modules: dict[str, str]) -> bool:
  return module in modules and modules[module].endswith("__init__.py")


def _imports(module: str, path: str, modules: dict[str, str]) -> set[str]:
  """The package modules that `module` imports, anywhere in its body."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  package = module if _is_package(module, modules) else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name in modules:
          found.add(alias.name)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")
        base = base[:len(base) - (node.level - 1)]
        origin = ".".join(base + ([node.module] if node.module else []))
      else:
        origin = node.module or ""
      for alias in node.names:
        # `from pkg import sub` imports the submodule; `from pkg import name` reads pkg itself.
        sub = f"{origin}.{alias.name}"
        if sub in modules:
          found.add(sub)
        elif origin in modules:
          found.add(origin)
  found.discard(module)
  return found


def import_graph() -> dict[str, set[str]]:
  """{module: modules it imports}, without a package's imports of its own submodules."""
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    edges = _imports(module, path, modules)
    if _is_package(module, modules):
      edges = {e for e in edges if not e.startswith(module + ".")}
    graph[module] = edges
  return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_graph_sees_imports_inside_functions(tmp_path):
  path = tmp_path / "m.py"
  path.write_text("def f():\n  from ban_jax.ops import attractor\n  return attractor\n")
  modules = _modules()
  assert _imports("ban_jax.training.fake", str(path), modules) == {"ban_jax.ops.attractor"}


def test_cycle_detection_finds_a_three_module_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
  cycles = _cycles(import_graph())
  assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_submodules_do_not_import_their_package_init():
  # Importing a name from one's own package __init__ closes a circle through it (the __init__
  # imports its submodules); submodules import each other by module path instead.
  graph = import_graph()
  bad = sorted(f"{m} -> {e}" for m, edges in graph.items() for e in edges
               if m.startswith(e + ".") and e != PACKAGE)
  assert not bad, bad


def test_gravity_backends_do_not_import_each_other():
  backends = [f"{PACKAGE}.ops.gravity.{b}" for b in ("xla", "triton", "mosaic")]
  graph = import_graph()
  bad = sorted(f"{b} -> {e}" for b in backends for e in graph.get(b, ()) if e in backends)
  assert not bad, bad
  assert all(b in graph for b in backends), "a gravity backend module moved: update this test"


def test_ops_import_no_higher_layer():
  higher = tuple(f"{PACKAGE}.{p}" for p in ("layers", "models", "training", "data", "errors",
                                          "main", "config_validation", "inference",
                                          "generate"))
  bad = sorted(f"{m} -> {e}" for m, edges in import_graph().items()
               if m.startswith(f"{PACKAGE}.ops") for e in edges if e.startswith(higher))
  assert not bad, bad


@pytest.mark.parametrize("lower,higher", [
    ("layers", ("models", "training", "data", "main", "inference", "generate")),
    ("models", ("training", "data", "main", "inference", "generate")),
    # Decoding and sampling are model-level: training's sample uses them, not the reverse.
    ("inference.decode", ("training", "data", "main", "generate")),
    ("inference.generate", ("training", "data", "main", "generate")),
])
def test_imports_run_one_way(lower, higher):
  higher = tuple(f"{PACKAGE}.{p}" for p in higher)
  bad = sorted(f"{m} -> {e}" for m, edges in import_graph().items()
               if m.startswith(f"{PACKAGE}.{lower}") for e in edges if e.startswith(higher))
  assert not bad, bad


def test_files_are_small():
  long = {}
  for path in _modules().values():
    with open(path, encoding="utf-8") as f:
      n = sum(1 for _ in f)
    if n > MAX_LINES:
      long[os.path.relpath(path, REPO)] = n
  assert not long, f"files over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("folders,pattern", [
    # Ops, layers and models are library code: they raise ValueError/TypeError; only the
    # boundary (config validation, data opening, checkpoint restore, the CLI) speaks UserError.
    (("ops", "layers", "models"), r"UserError"),
    # Private names shared across modules, or settings patched through a module global.
    (("",), r"protected-access|_OPTIONS_OVERRIDE|CONFIG_ALIASES"),
])
def test_forbidden_patterns(folders, pattern):
  hits = []
  for module, path in _modules().items():
    rel = os.path.relpath(path, os.path.join(REPO, PACKAGE))
    if not any(rel.startswith(f) for f in folders):
      continue
    with open(path, encoding="utf-8") as f:
      for i, line in enumerate(f, 1):
        if re.search(pattern, line):
          hits.append(f"{module}:{i}: {line.strip()}")
  assert not hits, "\n".join(hits)
