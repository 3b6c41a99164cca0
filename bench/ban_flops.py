"""FLOPs of the Branched Attractor Network's parts against the number of branches N.

For N = 2, 4, 8, 16 at a fixed width, counts (XLA's `cost_analysis` of the lowered, jitted
forward pass, per token):
  * deep: the AttractorBlock (the K-step iteration) on the gathered focus drive;
  * deep/step in layer: the per-step increment inside the composed BranchedAttractor,
    (F(K) − F(K/2)) / (K/2), which would grow with N if more than the focus were iterated;
  * branched layer: the whole per-position transformation (branches, scorer, gate, attractor, out);
  * BAN block: attention + branched attractor + norms, and its forward+backward;
  * params: parameters of one block.
The attractor loop is unrolled for counting (XLA counts a while-loop body once).
Structural, not a speed target: the deep columns must not change with N.

With --models, also whole models at the proposed `default` scale: the train step's FLOPs per token
(cost_analysis of the compiled AdamW step, attractor unrolled) and its measured time and tokens/s
on the present backend, for the BAN (loop / unrolled / implicit gradients, dot-product attention)
and the transformer baseline at the same parameter count. Meant for an accelerator.

  python bench/ban_flops.py [--width 256] [--steps 6] [--length 128] [--models --batch 64]

Writes bench/results/ban_flops.json (or --out).
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ban_jax.layers.attention import AttentionConfig
from ban_jax.layers.branches import AttractorBlock, AttractorConfig, BranchedAttractor
from ban_jax.models import make_config
from ban_jax.models.ban import BANBlock, BANConfig, BANLM, with_unroll
from ban_jax.models.common import param_count
from ban_jax.models.flops import compiled_flops
from ban_jax.models.transformer import TransformerLM

# The proposed `default` preset (≈4.8M parameters with the byte vocabulary) and the transformer
# baseline with the same attention and parameter count, as flat config.model fields. The attractor
# loop stays a fori_loop (unroll=1) here; "ban (unrolled)" below sets it.
DEFAULT_BAN = dict(name="ban", d_model=256, num_layers=6, num_heads=8, num_kv_heads=8,
                   head_dim=32, num_branches=5, attractor_steps=6, alpha=0.5, gamma=1.0,
                   threshold=0.02, cap=0.15, dtype="bfloat16")
BASELINE = dict(name="transformer", d_model=256, num_layers=6, num_heads=8, num_kv_heads=8,
                head_dim=32, mlp_dim=1024, dtype="bfloat16")


def _zeros_like_init(module, *args, **kwargs):
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _block(width, n, steps):
  heads = width // 64 or 1
  return BANBlock(BANConfig(
      width=width, dtype="float32",
      attention=AttentionConfig(num_heads=heads, num_kv_heads=heads,
                                head_dim=64 if width >= 64 else width),
      attractor=AttractorConfig(num_branches=n, steps=steps, unroll=True)))


def measure(width: int, steps: int, length: int, branches=(2, 4, 8, 16)):
  """Returns one row per N with FLOPs per token."""
  x = jnp.zeros((1, length, width), jnp.float32)
  rows = []
  for n in branches:
    deep = AttractorBlock(steps=steps, alpha=0.5, unroll=True)
    deep_params = _zeros_like_init(deep, x)
    deep_flops = compiled_flops(lambda p, h: deep.apply(p, h, h), deep_params, x)

    def layer_flops(k):
      layer = BranchedAttractor(AttractorConfig(num_branches=n, steps=k, unroll=True))
      params = _zeros_like_init(layer, x)
      return compiled_flops(lambda p, x_: layer.apply(p, x_), params, x), params

    full, params = layer_flops(steps)
    half, _ = layer_flops(steps // 2)
    per_step = (full - half) / (steps - steps // 2)

    block = _block(width, n, steps)
    block_params = _zeros_like_init(block, x)
    block_fwd = compiled_flops(lambda p, x_: block.apply(p, x_), block_params, x)
    block_fwd_bwd = compiled_flops(jax.grad(lambda p, x_: block.apply(p, x_).sum()),
                                   block_params, x)
    rows.append(dict(
        num_branches=n, width=width, steps=steps, length=length,
        deep_flops_per_token=deep_flops / length,
        deep_step_in_layer_flops_per_token=per_step / length,
        branched_layer_flops_per_token=full / length,
        block_fwd_flops_per_token=block_fwd / length,
        block_fwd_bwd_flops_per_token=block_fwd_bwd / length,
        layer_params=sum(int(a.size) for a in jax.tree.leaves(params)),
        block_params=sum(int(a.size) for a in jax.tree.leaves(block_params))))
  return rows


def _train_step(model, tokens):
  optimizer = optax.adamw(1e-3)

  def loss_fn(params):
    logits, state = model.apply({"params": params}, tokens[:, :-1],
                                mutable=["diagnostics", "losses"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    return ce + sum(jax.tree.leaves(state.get("losses", {})))

  def step(params, opt_state):
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return optimizer, step


def measure_models(batch: int, length: int, vocab_size: int = 259, repeats: int = 20):
  """Train-step FLOPs per token and measured time for the BAN variants and the baseline."""
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, vocab_size, (batch, length + 1)),
                       jnp.int32)
  ban = lambda **flat: BANLM(vocab_size=vocab_size, config=make_config(dict(DEFAULT_BAN, **flat)))
  models = {
      "ban (fori_loop)": ban(),
      "ban (unrolled)": ban(unroll=True),
      "ban (implicit grad)": ban(implicit_grad=True),
      "transformer baseline": TransformerLM(vocab_size=vocab_size,
                                            config=make_config(BASELINE)),
  }
  rows = []
  for name, model in models.items():
    params = jax.jit(model.init)(jax.random.key(0), tokens[:, :-1])["params"]
    optimizer, step = _train_step(model, tokens)
    opt_state = optimizer.init(params)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state).compile()
    # FLOPs from the unrolled twin: XLA counts a loop body once.
    counted = with_unroll(model) if isinstance(model, BANLM) else model
    _, counted_step = _train_step(counted, tokens)
    flops = compiled_flops(counted_step, params, opt_state)
    for _ in range(3):
      params, opt_state = compiled(params, opt_state)
    jax.block_until_ready(params)
    start = time.perf_counter()
    for _ in range(repeats):
      params, opt_state = compiled(params, opt_state)
    jax.block_until_ready(params)
    seconds = (time.perf_counter() - start) / repeats
    rows.append(dict(model=name, params=param_count(model), batch=batch, length=length,
                     step_ms=1e3 * seconds, tokens_per_s=batch * length / seconds,
                     train_flops_per_token=flops / (batch * length)))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--models", action="store_true",
                      help="also time whole-model train steps (BAN vs transformer)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--model-length", type=int, default=512)
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" /
                                           "ban_flops.json"))
  args = parser.parse_args()
  rows = measure(args.width, args.steps, args.length)
  header = (f"{'N':>3} {'deep':>10} {'deep/step':>10} {'layer':>11} {'block fwd':>11} "
            f"{'block f+b':>11} {'block params':>13}")
  print(f"FLOPs per token, width {args.width}, {args.steps} attractor steps, "
        f"length {args.length}, backend {jax.default_backend()}")
  print(header)
  for r in rows:
    print(f"{r['num_branches']:>3} {r['deep_flops_per_token']:>10.0f} "
          f"{r['deep_step_in_layer_flops_per_token']:>10.0f} "
          f"{r['branched_layer_flops_per_token']:>11.0f} {r['block_fwd_flops_per_token']:>11.0f} "
          f"{r['block_fwd_bwd_flops_per_token']:>11.0f} {r['block_params']:>13d}")
  deep = {r["deep_flops_per_token"] for r in rows}
  step = {r["deep_step_in_layer_flops_per_token"] for r in rows}
  print(f"deep part independent of N: {len(deep) == 1 and len(step) == 1}")
  result = dict(
      description="XLA cost_analysis FLOPs per token of the BAN's parts vs number of branches "
                  "(forward unless noted; attractor unrolled for counting).",
      backend=jax.default_backend(), device=str(jax.devices()[0].device_kind),
      jax_version=jax.__version__, deep_independent_of_n=len(deep) == 1 and len(step) == 1,
      rows=rows)
  if args.models:
    models = measure_models(args.batch, args.model_length)
    print(f"\ntrain step (AdamW), batch {args.batch} x length {args.model_length}, "
          f"{jax.devices()[0].device_kind}")
    print(f"{'model':<22} {'params':>9} {'ms/step':>9} {'tokens/s':>11} {'FLOPs/token':>12}")
    for r in models:
      print(f"{r['model']:<22} {r['params']:>9d} {r['step_ms']:>9.2f} {r['tokens_per_s']:>11.0f} "
            f"{r['train_flops_per_token']:>12.0f}")
    result["models"] = models
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
