"""Layers under `nn.scan`: one traced block for the whole stack, and the per-layer tree.

A scanned model (`model.scan_layers=True`) holds its blocks' variables once, under `layers`,
each with a leading axis of length `depth` (MaxText's `scan_layers`): the train step traces and
compiles one block instead of `depth`. The per-layer tree (`layer_0`, `layer_1`, ... or
`block_0`, ...) stays the project's canonical form: `.banx` export, the NumPy runtime,
diagnostics, plots and `ban_jax.load` see it whichever way a run trained, so `unstack` and
`stack` convert between the two and `ban_jax.load` hands back the unscanned model.
"""

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np

from ban_jax.layers.attention import WEIGHTS_COLLECTION

LAYERS = "layers"
# Every collection a block writes gets the layer axis in front: parameters, what it sows (the
# train step's diagnostics and auxiliary losses, inspection values) and its KV cache.
_AXES = {"params": 0, "diagnostics": 0, "losses": 0, "intermediates": 0, "cache": 0,
         WEIGHTS_COLLECTION: 0}


def scanned(block: type[nn.Module], depth: int, num_args: int, *, remat_static=None):
  """`block` applied `depth` times under one `nn.scan`.

  Args:
    block: a module class whose `__call__(x, *args)` returns `(x, None)` (the blocks' field
      `scanned=True`).
    depth: number of layers.
    num_args: number of arguments after `x`; every one is the same for all layers.
    remat_static: `nn.remat`'s static_argnums for the block (counting `self`), or None for
      no rematerialisation.

  Returns:
    A module class: `cls(config, scanned=True, name=LAYERS)(x, *args) -> (x, None)`.
  """
  if remat_static is not None:
    # prevent_cse=False: the scan already keeps XLA from merging the recomputation away.
    block = nn.remat(block, static_argnums=remat_static, prevent_cse=False)
  return nn.scan(block, variable_axes=_AXES, split_rngs={"params": True, "dropout": True},
                 in_axes=(nn.broadcast,) * num_args, length=depth)


def is_scanned(tree) -> bool:
  return isinstance(tree, dict) and LAYERS in tree


def unstack(tree: Any, layer_format: str) -> Any:
  """The per-layer form of a tree whose `layers` entry has a leading layer axis.

  Args:
    tree: a nested dict (parameters, sown collections, an optimizer state's dicts); any dict
      holding `layers` is converted, wherever it sits.
    layer_format: "layer_{}" (BAN) or "block_{}" (transformer).

  Returns:
    The same tree with `layers` replaced by `layer_format.format(i)` for each layer i, its
    leaves indexed along axis 0; trees without `layers` come back unchanged.
  """
  if isinstance(tree, dict):
    out = {k: unstack(v, layer_format) for k, v in tree.items() if k != LAYERS}
    if LAYERS in tree:
      stacked = tree[LAYERS]
      depth = _depth(stacked)
      for i in range(depth):
        out[layer_format.format(i)] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return out
  return tree


def per_layer(flat: dict[str, Any], layer_format: str, sep: str = "/") -> dict[str, Any]:
  """`unstack` for a flat {"a/b/c": array} dict (e.g. a few leaves picked out of the params)."""
  nested = flax.traverse_util.unflatten_dict(flat, sep=sep)
  return flax.traverse_util.flatten_dict(unstack(nested, layer_format), sep=sep)


def unscanned(model: nn.Module, params: Any) -> tuple[nn.Module, Any]:
  """(model, params) in the per-layer form: `scan_layers` off, parameters unstacked."""
  if not getattr(model.config, "scan_layers", False):
    return model, params
  config = dataclasses.replace(model.config, scan_layers=False)
  return model.clone(config=config), unstack(params, model.LAYER_FORMAT)


def stack(tree: Any, layer_format: str) -> Any:
  """Inverse of `unstack`: `layer_0 ... layer_{L-1}` -> `layers` with a leading axis.

  Host arrays stack with NumPy, device arrays with `jax.numpy`.
  """
  if not isinstance(tree, dict):
    return tree
  names = [layer_format.format(i) for i in range(len(tree))]
  depth = next((i for i, n in enumerate(names) if n not in tree), len(names))
  out = {k: stack(v, layer_format) for k, v in tree.items()
         if k not in names[:depth]}
  if depth:
    layers = [stack(tree[n], layer_format) for n in names[:depth]]
    out[LAYERS] = jax.tree.map(_stack_leaves, *layers)
  return out


def _stack_leaves(*leaves):
  if all(isinstance(x, np.ndarray) for x in leaves):
    return np.stack(leaves)
  return jax.numpy.stack(leaves)


def _depth(stacked) -> int:
  leaves = jax.tree.leaves(stacked)
  if not leaves:
    raise ValueError("a scanned `layers` entry without arrays")
  return int(np.shape(leaves[0])[0])
