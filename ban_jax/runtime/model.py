"""A `.banx` model in NumPy: load it, then prefill and decode through the bounded cache.

    model = load("model.banx")
    session = model.session(Spec("gravity", slots=64))
    logits = session.prefill(ids)        # float32 [P, vocab]; ids int [P] from position 0
    logits = session.step(token)         # float32 [vocab], the token after everything so far

A session is `ban_jax.inference.decode.Decoder` for one stream: each token's surprisal under
the model is stored with it for the gravity policy (a prompt's from its prefill logits, a
decoded token's from the logits that predicted it), so a session makes the JAX cache's
decisions.
"""

from __future__ import annotations

import numpy as np

from . import banx
from . import cache as cache_lib
from . import checks
from . import layers

KINDS = ("ban", "transformer")
OFFLOAD = ("mapped", "loaded")


class Model:
  """A loaded `.banx` model (weights memory-mapped; see `offload`).

  Attributes:
    header: the file's header (model, vocab_size, seq_len, tokenizer, config, dtype, tensors).
    kind: "ban" or "transformer".
    vocab_size, seq_len: from the header.
  """

  def __init__(self, path: str, *, branches: str = "mapped", everything: str = "mapped"):
    """Opens `path`.

    Args:
      path: a `.banx` file.
      branches: "mapped" keeps the BAN's per-branch kernels memory-mapped (pages come from the
        file as they are used), "loaded" copies them into private memory at load.
      everything: the same for all the other weights.
    """
    for name, value in (("branches", branches), ("everything", everything)):
      if value not in OFFLOAD:
        raise ValueError(f"{name}={value!r} is not one of {OFFLOAD}.")
    self.path = path
    self.header = banx.read_header(path)
    cfg = self.header.get("model")
    self.kind = cfg.get("kind") if isinstance(cfg, dict) else None
    if self.kind not in KINDS:
      raise banx.BanxError(f"{path} holds a model of kind {checks.show(self.kind)}; the "
                           f"runtime runs {KINDS}.")
    try:
      checks.model(self.header, path)
    except checks.Bad as e:
      raise banx.BanxError(str(e)) from None
    attention = cfg["attention"]
    if attention["tagging"] and attention.get("tagging_source", "hidden") != "hidden":
      raise banx.BanxError(f"{path} tags keys by surprisal (tagging_source="
                           f"{checks.show(attention['tagging_source'])}), which needs a second "
                           "reading pass the runtime does not have; run it with python -m "
                           "ban_jax.generate.")
    self.config = cfg
    self.vocab_size = int(self.header["vocab_size"])
    self.seq_len = int(self.header["seq_len"])
    self.weights = banx.Weights(path, self.header)
    if everything == "loaded":
      self.weights.load_into_memory("")
    elif branches == "loaded":
      for name in self.weights.names():
        if name.endswith("attractor/branches/kernel"):
          self.weights.load_into_memory(name)
    heads = attention["num_heads"]
    self.kv_heads = attention.get("num_kv_heads") or heads
    self.head_dim = attention.get("head_dim") or cfg["width"] // heads
    self._attention = dict(attention, head_dim=self.head_dim, num_kv_heads=self.kv_heads)
    self._layer = "layer_{}" if self.kind == "ban" else "block_{}"

  def _scoped(self, prefix: str):
    return lambda name: self.weights.get(f"{prefix}/{name}")

  def empty_caches(self, spec: cache_lib.Spec) -> list[dict]:
    return [cache_lib.empty(spec.slots, self.kv_heads, self.head_dim)
            for _ in range(self.config["depth"])]

  def forward(self, tokens, positions, caches, spec, surprisal=None):
    """The logits of L new tokens after what `caches` hold.

    Args:
      tokens: int [L].
      positions: int [L], their positions.
      caches: one cache per layer (replaced in the list by the updated ones).
      spec: the `cache.Spec`.
      surprisal: float [L] or None, the tokens' surprisal under the model.

    Returns:
      float32 [L, vocab].
    """
    # Non-finite values are part of the computation (masked scores are -inf, a key mass can
    # underflow to 0 before its log); NumPy's warnings about them would only be noise.
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
      return self._forward(tokens, positions, caches, spec, surprisal)

  def _forward(self, tokens, positions, caches, spec, surprisal):
    cfg = self.config
    x = self.weights.get("embed/embedding")[tokens]
    ban = self.kind == "ban"
    for i in range(cfg["depth"]):
      scope = self._layer.format(i)
      w = self._scoped(scope)
      h = layers.rms_norm(x, w("attention_norm/scale" if ban else "attn_norm/scale"))
      h, caches[i] = layers.attention(h, self._scoped(f"{scope}/attention" if ban else
                                                      f"{scope}/attn"), self._attention,
                                      caches[i], positions, spec, surprisal)
      x = x + h
      if ban:
        h = layers.rms_norm(x, w("attractor_norm/scale"))
        x = x + layers.branched_attractor(h, self._scoped(f"{scope}/attractor"),
                                          cfg["attractor"])
      else:
        h = layers.rms_norm(x, w("mlp_norm/scale"))
        x = x + layers.mlp(h, self._scoped(f"{scope}/mlp"))
    x = layers.rms_norm(x, self.weights.get("final_norm/scale"))
    if ban and not cfg.get("tie_embeddings", True):
      return x @ self.weights.get("logits/kernel")
    # Tied output: the embeddings, with the width**-0.5 the JAX models apply.
    return (x * np.float32(cfg["width"] ** -0.5)) @ self.weights.get("embed/embedding").T

  def session(self, spec: cache_lib.Spec) -> "Session":
    return Session(self, spec)


def log_softmax(logits):
  shifted = logits - np.max(logits, axis=-1, keepdims=True)
  return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


class Session:
  """One stream decoded through a bounded cache (`ban_jax.inference.decode.Decoder`)."""

  def __init__(self, model: Model, spec: cache_lib.Spec):
    self.model, self.spec = model, spec
    self.caches = model.empty_caches(spec)
    self.position = 0
    self.last = None  # float32 [vocab]: the logits after the newest token

  def prefill(self, ids) -> np.ndarray:
    """ids int [P] from position 0 -> float32 logits [P, vocab]; stores the prompt."""
    ids = np.asarray(ids, np.int64)
    if self.position:
      raise ValueError("prefill starts a stream; this session already holds one (make a new "
                       "session).")
    if self.spec.policy == "full" and ids.shape[0] > self.spec.slots:
      raise ValueError(f"a full cache of {self.spec.slots} slots cannot hold the "
                       f"{ids.shape[0]} prompt tokens; give it more slots or choose a bounded "
                       "policy.")
    positions = np.arange(ids.shape[0], dtype=np.int32)
    logits = self.model.forward(ids, positions, self.caches, self.spec)
    # The prompt's surprisal is known only now: written into the slots that hold it.
    read = np.zeros(ids.shape[0], np.float32)
    read[1:] = -np.take_along_axis(log_softmax(logits[:-1]), ids[1:, None], axis=-1)[:, 0]
    for c in self.caches:
      held = (c["position"] >= 0) & (c["position"] < ids.shape[0])
      c["surprisal"] = np.where(held, read[np.clip(c["position"], 0, ids.shape[0] - 1)],
                                c["surprisal"]).astype(np.float32)
    self.position, self.last = ids.shape[0], logits[-1]
    return logits

  def step(self, token: int) -> np.ndarray:
    """The next token (after a prefill) -> float32 logits [vocab] that follow it."""
    if self.last is None:
      raise ValueError("step needs a prefill first (at least a BOS token).")
    if self.spec.policy == "full" and self.position >= self.spec.slots:
      raise ValueError(f"the full cache of {self.spec.slots} slots is full; use a bounded "
                       "policy or more slots.")
    surprisal = -log_softmax(self.last)[token]
    logits = self.model.forward(np.asarray([token]), np.asarray([self.position], np.int32),
                                self.caches, self.spec,
                                np.asarray([surprisal], np.float32))[0]
    self.position += 1
    self.last = logits
    return logits

  def score(self, ids) -> np.ndarray:
    """Teacher-forced NLL (nats) of ids[1:], one token at a time: float32 [P - 1]."""
    ids = np.asarray(ids, np.int64)
    self.prefill(ids[:1])
    out = []
    for token in ids[1:]:
      out.append(-log_softmax(self.last)[token])
      self.step(int(token))
    return np.asarray(out, np.float32)


def load(path: str, **kw) -> Model:
  """Opens a `.banx` file (see `Model`)."""
  return Model(path, **kw)
