"""The import structure of ban_jax/ops: no cycles, one-way layers, no dependency on the rest."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
OPS = os.path.join(ROOT, "ban_jax", "ops")
PACKAGE = "ban_jax.ops.gravity"


def _modules():
  """{module name: path} of every module under ban_jax/ops."""
  out = {}
  for folder, _, files in os.walk(OPS):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
  return out


def _imports(path):
  """Every module an import statement of `path` names, inside functions included.

  `from a import b` names both a and a.b: b may be a submodule or a name of a's __init__.
  """
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module)
      found.update(f"{node.module}.{alias.name}" for alias in node.names)
  return found


def _graph():
  modules = _modules()
  return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


def test_no_import_cycle():
  graph = _graph()
  # A package's __init__ may import its submodules; every other edge must be acyclic.
  for m in graph:
    graph[m] = {i for i in graph[m] if not i.startswith(m + ".")}
  state = {}

  def visit(m, path):
    state[m] = "open"
    for n in graph[m]:
      assert state.get(n) != "open", f"import cycle: {' -> '.join(path + [n])}"
      if n not in state:
        visit(n, path + [n])
    state[m] = "done"
  for m in graph:
    if m not in state:
      visit(m, [m])


def test_submodules_never_import_the_package_init():
  for m, deps in _graph().items():
    if m.startswith(PACKAGE + "."):
      assert PACKAGE not in deps, m


def test_ops_depend_on_nothing_else_of_ban_jax():
  for m, path in _modules().items():
    for i in _imports(path):
      if i.startswith("ban_jax"):
        assert i.startswith("ban_jax.ops"), (m, i)


def test_files_are_small():
  for path in _modules().values():
    with open(path, encoding="utf-8") as f:
      assert sum(1 for _ in f) <= 450, path
