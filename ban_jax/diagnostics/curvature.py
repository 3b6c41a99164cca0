"""Gravity g = −∇Φ(t|Q) and the curvature of Φ in the query's input-embedding space.

The paper's gravity and Hessian need a continuous space. In logit space, or in the final hidden
state, the Hessian of Φ(t|Q) is the same for every token t (`potential.logit_hessian`); the
token-specific curvature lives in the input: the embeddings e_1..e_L of the query's tokens,
through the whole network. `embedding_potential` builds Φ(t|Q) as a function of a shift δ
[L, width] added to those embeddings (any linen model whose token lookup is an `nn.Embed`
call), and the eigenvalues come from Hessian-vector products (forward-over-reverse,
`jax.jvp` of `jax.grad`), never the L·width-square Hessian itself.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ban_jax.diagnostics import potential as potential_lib


def embedding_potential(model: nn.Module, params, tokens, **apply_kwargs) -> Callable:
  """Φ(·|Q) at the query's last position, as a function of a shift of its input embeddings.

  Every `nn.Embed.__call__` output inside `model` (its token lookup; `Embed.attend`, a tied
  output layer, is not touched) gets `delta` added, so the gradient and Hessian are with
  respect to the embeddings the network actually reads.

  Args:
    model: a linen LM, `model.apply({"params": params}, tokens[None], **apply_kwargs)` ->
      logits [1, L, vocab].
    params: its parameters.
    tokens: int [L], the query.
    **apply_kwargs: passed to `model.apply` (e.g. `deterministic=True`).

  Returns:
    phi(delta: float [L, width]) -> float [vocab], Φ(t|Q) for every t, nats.
  """
  tokens = jnp.asarray(tokens)[None]

  def phi(delta):
    def shift(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if isinstance(context.module, nn.Embed) and context.method_name == "__call__":
        out = out + delta.astype(out.dtype)
      return out

    with nn.intercept_methods(shift):
      logits = model.apply({"params": params}, tokens, **apply_kwargs)
    return potential_lib.potential(logits[0, -1].astype(jnp.float32))

  return phi


def gravity(phi: Callable, token: int, delta):
  """g = −∇_δ Φ(token|Q): the direction in embedding space that most raises P(token).

  Args:
    phi: as `embedding_potential` returns.
    token: the token t.
    delta: float [L, width], where to evaluate (zeros: the query as written).

  Returns:
    float [L, width].
  """
  return -jax.grad(lambda d: phi(d)[token])(delta)


def hvp(f: Callable, x, v):
  """H v with H = ∇²f(x), by forward-over-reverse differentiation.

  Args:
    f: scalar function of an array like `x`.
    x, v: float arrays of one shape.

  Returns:
    float, the shape of x.
  """
  return jax.jvp(jax.grad(f), (x,), (v,))[1]


def top_eigenvalues(f: Callable, x, key, *, k: int = 1, iterations: int = 50):
  """The `k` eigenvalues of ∇²f(x) largest in magnitude, by block power iteration.

  Each iteration multiplies k orthonormal vectors by the Hessian (k Hessian-vector products)
  and re-orthonormalises them (QR); the eigenvalues are those of the k×k projected Hessian
  (Rayleigh–Ritz), sorted by magnitude, signs kept: a Hessian of Φ can be indefinite.

  Args:
    f: scalar function of an array like `x`.
    x: float array, the point.
    key: PRNG key for the starting vectors.
    k: how many eigenvalues, ≤ x.size.
    iterations: power iterations; convergence goes as (|λ_{k+1}| / |λ_k|)^iterations.

  Returns:
    (eigenvalues float [k], eigenvectors float [k, *x.shape]).
  """
  n = x.size
  if not 1 <= k <= n:
    raise ValueError(f"k={k} must be between 1 and the number of coordinates, {n}.")
  matvec = jax.vmap(lambda v: hvp(f, x, v.reshape(x.shape)).reshape(-1))
  basis, _ = jnp.linalg.qr(jax.random.normal(key, (n, k), x.dtype))

  def step(_, q):
    return jnp.linalg.qr(matvec(q.T).T)[0]

  basis = jax.lax.fori_loop(0, iterations, step, basis)
  projected = basis.T @ matvec(basis.T).T
  values, vectors = jnp.linalg.eigh((projected + projected.T) / 2)
  order = jnp.argsort(-jnp.abs(values))
  vectors = (basis @ vectors[:, order]).T
  return values[order], vectors.reshape((k,) + x.shape)
