"""The training and data packages: small files and no import cycles (imports inside functions
count too)."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("ban_jax/training", "ban_jax/data")


def _modules():
  out = {}
  for package in PACKAGES:
    for name in os.listdir(os.path.join(REPO, package)):
      if name.endswith(".py"):
        module = f"{package}/{name[:-3]}".replace("/", ".").removesuffix(".__init__")
        out[module] = os.path.join(REPO, package, name)
  return out


def _imports(path, known):
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name in known}
    elif isinstance(node, ast.ImportFrom) and node.module:
      for a in node.names:
        full = f"{node.module}.{a.name}"
        found.add(full if full in known else node.module)
  return found & set(known)


def test_no_import_cycles():
  modules = _modules()
  graph = {m: _imports(p, modules) for m, p in modules.items()}
  done, active = set(), []

  def visit(m):
    assert m not in active, "import cycle: " + " -> ".join(active[active.index(m):] + [m])
    if m in done:
      return
    active.append(m)
    for n in graph[m]:
      visit(n)
    active.pop()
    done.add(m)

  for m in graph:
    visit(m)


def test_files_stay_small():
  for module, path in _modules().items():
    with open(path) as f:
      assert sum(1 for _ in f) <= 450, module
