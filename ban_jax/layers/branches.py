"""The Branched Attractor Network's per-position layers (the Information Gravity paper).

Per position, from a normalised hidden state x [d_model]:

1. `BranchGenerator`: N branch drives b_n = x W_n + c_n [N, d], one independent projection each.
2. `SalienceScorer`: a cheap score s_n per branch (one shared dot product, no iteration);
   π = softmax(s).
3. `select_focus`: the focus f = argmax_n s_n; its drive h = b_f is gathered, so everything deep
   runs on one [d] vector whatever N is.
4. Peripheral branches stay alive cheaply: each gets one elementwise update p_n = tanh(b_n)
   (an attractor step from zero with no recurrence), O(N·d) and no d×d product per branch.
5. `InfluenceGate`: the salience-weighted peripheral message m = (Σ_{n≠f} π_n p_n) U is gated
   against the focus drive: exactly zero when ‖m‖ ≤ threshold·‖h‖, otherwise capped at cap·‖h‖.
6. `AttractorBlock`: z0 = tanh(h), then `steps` damped steps z ← (1−α)z + α tanh(z W + h + γ m̃).
7. Output y = (z V) scaled for routing: `routing="scale"` multiplies by π_f (as top-1 / Switch
   routing does, so the scorer learns from the loss); `routing="straight_through"` multiplies by
   π_f / stop_gradient(π_f) (forward value unchanged, same gradient direction for the scorer).

Per-branch parameters carry a leading branch axis ([N, ...]) so that branches can later be
sharded or offloaded one by one.

`BranchedAttractor(AttractorConfig(...))` composes the steps; the parts are usable alone.
"""

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ban_jax.layers.validation import check_choice, check_int, check_range
from ban_jax.ops import attractor as attractor_ops

# What `AttractorConfig.routing` may name (how the salience scorer gets its gradient).
ROUTINGS = ("scale", "straight_through")


@dataclasses.dataclass(frozen=True)
class AttractorConfig:
  """Settings of `BranchedAttractor` (frozen, so hashable: a valid linen attribute).

  Attributes:
    num_branches: N >= 1 branches per position.
    branch_width: width of a branch; None or 0: the input width.
    steps: fixed number of attractor steps, >= 1.
    alpha: attractor step size in (0, 1].
    gamma: scale of the peripheral influence in the attractor drive.
    threshold: influence gate threshold, a fraction of the focus drive's norm (<= cap).
    cap: influence cap, a fraction of the focus drive's norm (> 0; the paper's 15%).
    implicit_grad: implicit (fixed-point) gradients instead of backprop through the loop.
    init_scale: spectral norm of the attractor's W at initialisation (< 1: contractive).
    routing: "scale" (output × π_f) or "straight_through" (output × π_f / sg(π_f)).
    load_balance_weight: weight (>= 0) of the load-balance loss.
    unroll: `lax.fori_loop` unrolling of the attractor (True for FLOP counting).
  """
  num_branches: int = 4
  branch_width: int | None = None
  steps: int = 6
  alpha: float = 0.5
  gamma: float = 1.0
  threshold: float = 0.02
  cap: float = 0.15
  implicit_grad: bool = False
  init_scale: float = 0.5
  routing: str = "scale"
  load_balance_weight: float = 0.01
  unroll: Any = 1

  # Field -> its name in the flat `config.model` block.
  FLAT_NAMES: ClassVar[dict[str, str]] = {
      "num_branches": "num_branches", "branch_width": "branch_width",
      "steps": "attractor_steps", "alpha": "alpha", "gamma": "gamma",
      "threshold": "threshold", "cap": "cap", "implicit_grad": "implicit_grad",
      "init_scale": "init_scale", "routing": "routing",
      "load_balance_weight": "load_balance_weight", "unroll": "unroll"}

  def __post_init__(self):
    name = lambda field: "model." + self.FLAT_NAMES[field]
    check_int(name("num_branches"), self.num_branches)
    if self.branch_width is not None:
      check_int(name("branch_width"), self.branch_width, low=0)
    check_int(name("steps"), self.steps)
    check_range(name("alpha"), self.alpha, 0.0, 1.0, low_open=True)
    check_range(name("cap"), self.cap, 0.0, float("inf"), low_open=True)
    check_range(name("threshold"), self.threshold, 0.0, self.cap)
    check_choice(name("routing"), self.routing, ROUTINGS)
    check_range(name("load_balance_weight"), self.load_balance_weight, 0.0, float("inf"))


class BranchGenerator(nn.Module):
  """N branch drives per position from N independent learned projections.

  Attributes:
    num_branches: N.
    branch_width: width d of one branch.
    dtype: computation dtype.
  """
  num_branches: int
  branch_width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: [batch, length, d_model] -> branches [batch, length, N, d]."""
    kernel = self.param(
        "kernel",
        nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=-2, out_axis=-1,
                                         batch_axis=(0,)),
        (self.num_branches, x.shape[-1], self.branch_width))
    bias = self.param("bias", nn.initializers.zeros_init(),
                      (self.num_branches, self.branch_width))
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return jnp.einsum("btm,nmd->btnd", x, kernel) + bias


class SalienceScorer(nn.Module):
  """A cheap salience score per branch per position: one shared dot product plus a branch bias.

  The scorer is shared so that scores of different branches are comparable; the per-branch bias
  lets the load-balance loss steer usage directly.
  """

  @nn.compact
  def __call__(self, branches):
    """branches: [batch, length, N, d] -> scores [batch, length, N], float32 (or float64)."""
    num_branches, width = branches.shape[-2:]
    vector = self.param("vector", nn.initializers.normal(stddev=width ** -0.5), (width,))
    bias = self.param("bias", nn.initializers.zeros_init(), (num_branches,))
    branches = branches.astype(jnp.promote_types(branches.dtype, jnp.float32))
    return jnp.einsum("btnd,d->btn", branches, vector) + bias


def select_focus(scores):
  """Top-1 focus selection.

  Args:
    scores: [batch, length, N] float salience scores.

  Returns:
    (focus, probs): focus is int32 [batch, length], the index of the highest score (the first on
    ties); probs is [batch, length, N], softmax(scores) in at least float32.
  """
  probs = jax.nn.softmax(scores.astype(jnp.promote_types(scores.dtype, jnp.float32)), axis=-1)
  return jnp.argmax(scores, axis=-1).astype(jnp.int32), probs


def gather_branch(branches, focus):
  """Gathers the focus branch: [batch, length, N, d], int [batch, length] -> [batch, length, d]."""
  return jnp.take_along_axis(branches, focus[..., None, None], axis=-2)[..., 0, :]


def load_balance(focus, probs, mask):
  """Switch-style load balance N·Σ_n f_n·P_n over valid positions (1 when balanced, N collapsed).

  Args:
    focus: int32 [batch, length] chosen branch.
    probs: float32 [batch, length, N] salience probabilities.
    mask: bool [batch, length], True at real (non-padding) positions.

  Returns:
    A float32 scalar; its gradient flows through `probs` only (f_n is a count).
  """
  num_branches = probs.shape[-1]
  weight = mask.astype(jnp.float32)
  total = jnp.maximum(weight.sum(), 1.0)
  usage = jnp.einsum("bt,btn->n", weight, jax.nn.one_hot(focus, num_branches)) / total
  mean_prob = jnp.einsum("bt,btn->n", weight, probs) / total
  return num_branches * jnp.sum(usage * mean_prob)


class InfluenceGate(nn.Module):
  """Peripheral branches reach the focus only through this gate.

  The message is the salience-weighted sum of the peripheral states projected by a shared U; it is
  compared with the focus drive h by `ban_jax.ops.attractor.influence_gate`: zero when
  ‖m‖ ≤ threshold·‖h‖, else capped at cap·‖h‖. Because the weights are the raw probabilities π_n,
  the message fades as the focus grows confident, and weak peripheries are silenced exactly.

  Attributes:
    threshold: gate-opening fraction of ‖h‖.
    cap: the cap, a fraction of ‖h‖ (the paper's 15%).
    dtype: computation dtype.
  """
  threshold: float
  cap: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, peripheral, weights, reference):
    """Gates the peripheral message.

    Args:
      peripheral: [batch, length, N, d] peripheral states.
      weights: [batch, length, N] weights, zero at the focus branch.
      reference: [batch, length, d] focus drive.

    Returns:
      (influence [batch, length, d], is_open bool [batch, length]).
    """
    message = jnp.einsum("btn,btnd->btd", weights.astype(peripheral.dtype), peripheral)
    message = nn.Dense(peripheral.shape[-1], use_bias=False, dtype=self.dtype,
                       name="proj")(message)
    return attractor_ops.influence_gate(message, reference, threshold=self.threshold,
                                        cap=self.cap)


class AttractorBlock(nn.Module):
  """The deep part: the damped fixed-point iteration on the focus drive.

  Attributes:
    steps: attractor steps.
    alpha: step size in (0, 1].
    gamma: scale of the influence in the drive.
    implicit_grad: differentiate at the fixed point (memory constant in steps).
    init_scale: spectral norm of W at initialisation (< 1: contractive).
    unroll: `lax.fori_loop` unrolling (True for FLOP counting).
  """
  steps: int
  alpha: float
  gamma: float = 1.0
  implicit_grad: bool = False
  init_scale: float = 0.5
  unroll: Any = 1

  @nn.compact
  def __call__(self, h, influence=None):
    """Iterates from z0 = tanh(h).

    Args:
      h: [batch, length, d] focus drive.
      influence: optional [batch, length, d] gated peripheral signal.

    Returns:
      (z [batch, length, d], residual [batch, length]), both float32 (float64 for float64 h).
    """
    width = h.shape[-1]
    w = self.param("w", nn.initializers.orthogonal(scale=self.init_scale), (width, width))
    # The iteration runs in (at least) float32: residuals below bf16 resolution mean nothing.
    dtype = jnp.promote_types(h.dtype, jnp.float32)
    h = h.astype(dtype)
    if influence is not None:
      influence = influence.astype(dtype)
    return attractor_ops.iterate(jnp.tanh(h), h, w, influence, alpha=self.alpha,
                                 steps=self.steps, gamma=self.gamma,
                                 implicit_grad=self.implicit_grad, unroll=self.unroll)


class BranchedAttractor(nn.Module):
  """The branched attractor as a per-position transformation [.., d_model] -> [.., d_model].

  Sows into "diagnostics": focus_usage_<n> (fraction of valid positions whose focus is branch n),
  salience_entropy (nats), load_balance (N·Σ f·P: 1 balanced, N collapsed), attractor_residual
  (‖z_K − z_{K−1}‖), attractor_residual_rel (the same over ‖z_K‖), influence_magnitude
  (γ‖m̃‖/‖h‖, at most γ·cap), gate_open_rate. Sows load_balance_weight·load_balance into
  "losses" (when the weight is > 0), and the focus index per token into "intermediates".

  Attributes:
    config: the `AttractorConfig`.
    dtype: computation dtype of the projections.
  """
  config: AttractorConfig = AttractorConfig()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, quiet=False):
    """Applies the branched attractor per position.

    Args:
      x: [batch, length, d_model] (normalised) hidden states.
      mask: optional bool [batch, length], True at real tokens; diagnostics and the load-balance
        loss ignore the rest.
      quiet: sow nothing, neither diagnostics nor the load-balance loss (a model's first,
        no-gradient reading pass).

    Returns:
      [batch, length, d_model] in `dtype`.
    """
    cfg = self.config
    n = cfg.num_branches
    width = cfg.branch_width or x.shape[-1]
    if mask is None:
      mask = jnp.ones(x.shape[:2], bool)

    branches = BranchGenerator(n, width, dtype=self.dtype, name="branches")(x)
    scores = SalienceScorer(name="salience")(branches)
    focus, probs = select_focus(scores)
    h = gather_branch(branches, focus)                        # [b, t, d]: no N from here on
    focus_prob = jnp.take_along_axis(probs, focus[..., None], axis=-1)[..., 0]

    if n > 1:
      peripheral = jnp.tanh(branches)                         # the cheap, shallow update
      weights = probs * (1.0 - jax.nn.one_hot(focus, n, dtype=probs.dtype))
      influence, is_open = InfluenceGate(cfg.threshold, cfg.cap, dtype=self.dtype,
                                         name="gate")(peripheral, weights, h)
    else:
      influence, is_open = None, jnp.zeros(x.shape[:2], bool)

    z, residual = AttractorBlock(cfg.steps, cfg.alpha, cfg.gamma, cfg.implicit_grad,
                                 cfg.init_scale, cfg.unroll, name="attractor")(h, influence)
    y = nn.Dense(x.shape[-1], use_bias=False, dtype=self.dtype, name="out")(z)
    if cfg.routing == "scale":
      route = focus_prob
    else:
      route = focus_prob / jax.lax.stop_gradient(focus_prob)
    y = y * route[..., None].astype(y.dtype)

    if not quiet:
      self._sow_diagnostics(mask, focus, probs, h, z, residual, influence, is_open)
    return y

  def _sow_diagnostics(self, mask, focus, probs, h, z, residual, influence, is_open):
    weight = mask.astype(jnp.float32)
    total = jnp.maximum(weight.sum(), 1.0)
    mean = lambda v: jnp.sum(v.astype(jnp.float32) * weight) / total
    n = self.config.num_branches
    usage = jnp.einsum("bt,btn->n", weight, jax.nn.one_hot(focus, n)) / total
    for i in range(n):
      self.sow("diagnostics", f"focus_usage_{i}", usage[i])
    entropy = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-30)), axis=-1)
    self.sow("diagnostics", "salience_entropy", mean(entropy))
    balance = load_balance(focus, probs, mask)
    self.sow("diagnostics", "load_balance", jax.lax.stop_gradient(balance))
    if self.config.load_balance_weight > 0:
      self.sow("losses", "load_balance", self.config.load_balance_weight * balance)
    residual = jax.lax.stop_gradient(residual)
    z_norm = attractor_ops.safe_norm(jax.lax.stop_gradient(z))
    self.sow("diagnostics", "attractor_residual", mean(residual))
    self.sow("diagnostics", "attractor_residual_rel",
             mean(residual / jnp.maximum(z_norm, 1e-12)))
    h_norm = attractor_ops.safe_norm(jax.lax.stop_gradient(h).astype(jnp.float32))
    if influence is None:
      magnitude = jnp.zeros_like(h_norm)
    else:
      magnitude = self.config.gamma * attractor_ops.safe_norm(
          jax.lax.stop_gradient(influence).astype(jnp.float32)) / jnp.maximum(h_norm, 1e-12)
    self.sow("diagnostics", "influence_magnitude", mean(magnitude))
    self.sow("diagnostics", "gate_open_rate", mean(is_open))
    self.sow("intermediates", "focus", focus)
