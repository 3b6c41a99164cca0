"""The semantic potential Φ(t|Q) = −log P(t|Q) and the information measures built on it.

All in nats. `logits` are the model's pre-softmax scores over the vocabulary after the query Q;
temperature T turns them into P_T(t|Q) = softmax(logits / T), the paper's Boltzmann form
exp(−Φ/T)/Z with Φ read at T = 1.
"""

import jax
import jax.numpy as jnp


def potential(logits, temperature: float = 1.0):
  """Φ(t|Q) = −log P_T(t|Q) for every token t.

  Args:
    logits: float [..., vocab].
    temperature: T > 0.

  Returns:
    float [..., vocab], ≥ 0, nats.
  """
  return -jax.nn.log_softmax(logits / temperature, axis=-1)


def entropy(logits, temperature: float = 1.0):
  """H(P_T) = Σ_t P_T(t) Φ_T(t) of the next-token distribution.

  Args:
    logits: float [..., vocab].
    temperature: T > 0.

  Returns:
    float [...], nats, in [0, log vocab].
  """
  log_p = jax.nn.log_softmax(logits / temperature, axis=-1)
  # xlogy keeps 0·log 0 = 0 where a probability underflows.
  return -jnp.sum(jax.scipy.special.xlogy(jnp.exp(log_p), jnp.exp(log_p)), axis=-1)


def kl_divergence(p, q):
  """KL(p ‖ q) = Σ p log(p / q) over the last axis; 0·log 0 = 0, and +inf where q = 0 < p.

  Args:
    p, q: float [..., n], probability vectors (each sums to 1 over the last axis).

  Returns:
    float [...], nats, ≥ 0.
  """
  p = jnp.asarray(p)
  q = jnp.asarray(q)
  terms = jax.scipy.special.xlogy(p, p) - jax.scipy.special.xlogy(p, q)
  return jnp.sum(jnp.where(p > 0, terms, 0.0), axis=-1)


def logit_hessian(logits):
  """∂²Φ(t|Q)/∂logits² = diag(p) − p pᵀ, the same matrix for every token t.

  Φ(t) = logsumexp(z) − z_t is linear in z_t, so its curvature in logit space, and in the
  final hidden state h (z = W h: Wᵀ(diag p − p pᵀ)W), does not depend on which token is
  read: a token-specific curvature only exists further down, in the input embeddings, which is
  where `ban_jax.diagnostics.curvature` measures it.

  Args:
    logits: float [vocab].

  Returns:
    float [vocab, vocab], symmetric positive semi-definite.
  """
  p = jax.nn.softmax(logits)
  return jnp.diag(p) - jnp.outer(p, p)
