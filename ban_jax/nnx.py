"""The layers users lift, as `flax.nnx` modules.

- `GravityAttentionFn`: native NNX. A drop-in `attention_fn` for `nnx.MultiHeadAttention` that
  owns a learnable per-head mass (`gravity_mass_log`, M = softplus); the fixed-mass function
  `ban_jax.layers.attention_fn.gravity_attention_fn` works there too.
- `GravityAttention`, `AttractorBlock`, `BranchedAttractor`, `BANBlock`: the linen layers of the
  same names (`ban_jax.layers`, `ban_jax.models.ban`) with their parameters held as
  `nnx.Param`, built on `Linen`, which wraps any linen module this way.

Why wrap instead of rewriting: the linen modules carry the config validation, the decode
cache, the diagnostics and the Pallas dispatch; a second implementation would drift from them.
Wrapping keeps one implementation, so "the same weights give the same outputs in both APIs"
holds by construction, and a linen checkpoint loads into NNX unchanged (`Linen(module, params)`).
The wrapper is ours rather than `nnx.bridge.ToNNX` because the BAN's load-balance loss is sown
into a collection: `ToNNX` keeps sown collections as module state and appends to them on every
call, while `Linen` returns them (`return_losses=True`) and keeps no state but the parameters
and the dropout rngs.

```python
from flax import nnx
from ban_jax import nnx as ban_nnx
mha = nnx.MultiHeadAttention(num_heads=4, in_features=32, decode=False,
                             attention_fn=ban_nnx.GravityAttentionFn(4), rngs=nnx.Rngs(0))
```
"""

from typing import Any

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp

from ban_jax.layers import attention as attention_layers
from ban_jax.layers import attention_fn as attention_fns
from ban_jax.layers import branches
from ban_jax.models import ban


class GravityAttentionFn(nnx.Module):
  """`gravity_attention_fn` with a learnable per-head mass, for `nnx.MultiHeadAttention`.

  Pass it as `attention_fn`; NNX adopts it as a submodule, so `gravity_mass_log` [heads]
  trains with the model. Calls take exactly the arguments of `gravity_attention_fn`.

  Attributes:
    gravity_mass_log: nnx.Param float32 [heads]; M = softplus(gravity_mass_log).
  """

  def __init__(self, num_heads: int, *arrays, score: str = "gravity",
               mass_init: float = attention_layers.DEFAULT_MASS_INIT, eps: float = 0.1,
               causal: bool = False, implementation: str = "auto", rngs: nnx.Rngs | None = None,
               **unknown):
    """Creates the mass.

    Args:
      num_heads: query heads of the attention layer it serves.
      score: "gravity", "inverse_square" or "dot".
      mass_init: raw initial mass (M = softplus(mass_init)).
      eps: distance softening ε.
      causal: add a causal mask (aligned to the end) on top of the mask the layer passes.
      implementation: as in `ban_jax.ops.gravity.gravity_attention`.
      rngs: unused (the mass starts at a constant); accepted as NNX modules accept it.
    """
    del rngs
    if hasattr(num_heads, "shape") or arrays:
      # nnx.MultiHeadAttention calls attention_fn(query, key, value, mask=..., ...): given the
      # class, that lands here with arrays.
      raise TypeError("attention_fn=GravityAttentionFn was given the class; pass an instance, "
                      "attention_fn=GravityAttentionFn(num_heads), so that NNX calls it with "
                      "the arrays.")
    if unknown:
      raise TypeError(f"GravityAttentionFn() got unexpected keyword arguments {sorted(unknown)}.")
    if not isinstance(num_heads, int) or num_heads < 1:
      raise ValueError(f"num_heads={num_heads!r} must be a positive int: the query heads of "
                       "the attention layer this attention_fn serves.")
    self.gravity_mass_log = nnx.Param(jnp.full((num_heads,), mass_init, jnp.float32))
    self.score, self.eps, self.causal = score, eps, causal
    self.implementation = implementation

  def __call__(self, query, key, value, bias=None, mask=None, broadcast_dropout=True,
               dropout_rng=None, dropout_rate=0.0, deterministic=False, dtype=None,
               precision=None, module=None, **kwargs):
    """`gravity_attention_fn(query, key, value, ...)` with this module's mass.

    Args: as `ban_jax.layers.attention_fn.gravity_attention_fn`; query [batch..., q_len,
    heads, head_dim], key [batch..., k_len, kv_heads, head_dim], value [batch..., k_len,
    kv_heads, v_dim].

    Returns:
      [batch..., q_len, heads, v_dim].
    """
    heads = self.gravity_mass_log.get_value().shape[0]
    if query.shape[-2] != heads:
      raise ValueError(f"query has {query.shape[-2]} heads but this GravityAttentionFn was "
                       f"built with num_heads={heads}; build it with the layer's num_heads.")
    mass = jax.nn.softplus(self.gravity_mass_log.get_value()) if self.score == "gravity" else None
    return attention_fns.gravity_attention_fn(
        query, key, value, bias=bias, mask=mask, broadcast_dropout=broadcast_dropout,
        dropout_rng=dropout_rng, dropout_rate=dropout_rate, deterministic=deterministic,
        dtype=dtype, precision=precision, module=module, mass=mass, score=self.score,
        eps=self.eps, causal=self.causal, implementation=self.implementation, **kwargs)


class Linen(nnx.Module):
  """A linen module as an NNX module: its parameters are `nnx.Param` leaves of `params`.

  `Linen(module, params)` adopts trained linen parameters (e.g. from `ban_jax.load`);
  `Linen.create(module, *sample, rngs=...)` initialises them from sample inputs.

  Attributes:
    module: the linen module (static).
    params: nested dict of nnx.Param, the linen parameter tree.
    rngs: nnx.Rngs for dropout, or None.
  """

  def __init__(self, module: nn.Module, params, *, rngs: nnx.Rngs | None = None):
    self.module = module
    self.params = nnx.data(jax.tree.map(nnx.Param, params))
    self.rngs = rngs

  @classmethod
  def create(cls, module: nn.Module, *sample, rngs: nnx.Rngs, **sample_kwargs):
    """Initialises `module` on sample inputs with the `params` stream of `rngs`."""
    params = module.init({"params": rngs.params()}, *sample, **sample_kwargs)["params"]
    return cls(module, params, rngs=rngs)

  def linen_params(self):
    """The parameters as the plain array tree `module.apply({"params": ...})` takes."""
    return jax.tree.map(lambda p: p.get_value(), self.params,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))

  def __call__(self, *args, return_losses: bool = False, **kwargs):
    """`module.apply({"params": params}, *args, **kwargs)`.

    `deterministic=False` (where the linen module takes it) draws dropout keys from the
    `dropout` stream of `rngs`.

    Returns:
      The linen module's output; with `return_losses`, (output, the float32 [] sum of what it
      sowed into "losses", e.g. the BAN's load-balance loss; 0 when nothing).
    """
    rngs = {}
    if kwargs.get("deterministic") is False:
      if self.rngs is None:
        raise ValueError(f"{type(self).__name__} was called with deterministic=False but "
                         "has no rngs; build it with rngs=nnx.Rngs(0, dropout=1).")
      rngs = {"dropout": self.rngs.dropout()}
    out, sown = self.module.apply({"params": self.linen_params()}, *args, rngs=rngs,
                                  mutable=["losses"], **kwargs)
    if not return_losses:
      return out
    leaves = jax.tree.leaves(sown.get("losses", {}))
    return out, sum((jnp.sum(x) for x in leaves), jnp.zeros((), jnp.float32))


def _sample(width: int):
  return jnp.zeros((1, 1, width), jnp.float32)


class GravityAttention(Linen):
  """`ban_jax.layers.attention.SelfAttention` (causal self-attention) as an NNX module.

  Called as the linen layer: `layer(x, segment_ids=..., positions=...)`, x [batch, length,
  in_features] -> [batch, length, in_features].
  """

  def __init__(self, config: attention_layers.AttentionConfig, in_features: int, *,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    module = attention_layers.SelfAttention(config, dtype=dtype)
    params = module.init({"params": rngs.params()}, _sample(in_features))["params"]
    super().__init__(module, params, rngs=rngs)


class AttractorBlock(Linen):
  """`ban_jax.layers.branches.AttractorBlock` as an NNX module.

  `block(h, influence=None)`: h [batch, length, width] -> (z [batch, length, width],
  residual [batch, length]), float32.
  """

  def __init__(self, width: int, *, steps: int, alpha: float, gamma: float = 1.0,
               implicit_grad: bool = False, init_scale: float = 0.5, rngs: nnx.Rngs):
    module = branches.AttractorBlock(steps=steps, alpha=alpha, gamma=gamma,
                                     implicit_grad=implicit_grad, init_scale=init_scale)
    params = module.init({"params": rngs.params()}, _sample(width))["params"]
    super().__init__(module, params, rngs=rngs)


class BranchedAttractor(Linen):
  """`ban_jax.layers.branches.BranchedAttractor` as an NNX module.

  `layer(x, mask=None)`: x [batch, length, width] -> [batch, length, width]; its load-balance
  loss comes back with `return_losses=True`.
  """

  def __init__(self, config: branches.AttractorConfig, width: int, *,
               dtype: Any = jnp.float32, rngs: nnx.Rngs):
    module = branches.BranchedAttractor(config, dtype=dtype)
    params = module.init({"params": rngs.params()}, _sample(width))["params"]
    super().__init__(module, params, rngs=rngs)


class BANBlock(Linen):
  """`ban_jax.models.ban.BANBlock` (attention + branched attractor) as an NNX module.

  `block(x, segment_ids=None, positions=None, mask=None, deterministic=True)`: x [batch,
  length, config.width] -> [batch, length, config.width]; `return_losses=True` also returns
  its load-balance loss.
  """

  def __init__(self, config: ban.BANConfig, *, rngs: nnx.Rngs):
    module = ban.BANBlock(config)
    params = module.init({"params": rngs.params()}, _sample(config.width))["params"]
    super().__init__(module, params, rngs=rngs)


def load(workdir: str, *, step: int | None = None):
  """`ban_jax.load` for NNX: (model, config), the model a `Linen` NNX module over the run's
  trained parameters; `model(tokens)` gives float32 logits [batch, length, vocab]."""
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  run = trained.load(workdir, step=step)
  return Linen(run.model, run.params), run.config
