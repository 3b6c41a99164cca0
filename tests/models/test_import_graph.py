"""The import graph of ban_jax.models and ban_jax.layers (every import statement, also inside
functions): no cycles, and one direction: models may import layers and ops, layers may import
ops, never the reverse."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "ban_jax"
# package -> the ban_jax packages it must not import.
FORBIDDEN = {"ops": ("layers", "models", "training"), "layers": ("models", "training"),
             "models": ("training", "data")}


def _module(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
  modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Import):
        targets.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(anchor + ([base] if base else []))
        targets.add(base)
        targets.update(f"{base}.{a.name}" for a in node.names)
    graph[name] = {t for t in targets if t in modules and t != name}
  return graph


def test_no_import_cycles_in_models_and_layers():
  # With the layering below, a cycle through models or layers would have to stay inside them.
  ours = lambda m: m.startswith(("ban_jax.models", "ban_jax.layers"))
  graph = {k: {t for t in v if ours(t)} for k, v in _graph().items() if ours(k)}
  state = {}

  def visit(node, stack):
    state[node] = "open"
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
      if nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])


def test_layering():
  for name, targets in _graph().items():
    parts = name.split(".")
    if len(parts) < 2 or parts[1] not in FORBIDDEN:
      continue
    for target in targets:
      tparts = target.split(".")
      assert len(tparts) < 2 or tparts[1] not in FORBIDDEN[parts[1]], (name, target)
