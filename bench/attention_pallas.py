"""The fused Pallas kernel on one GPU, in one process: its correctness, then its speed beside
cuDNN, the naive (materialised) gravity and the XLA blockwise gravity.

    python bench/attention_pallas.py --out=bench/results/attention_gpu_h100.json
    python bench/attention_pallas.py --check_only          # correctness only

1. Correctness (before any timing): forward and every gradient of
   `gravity_attention(implementation="pallas")` against the float64 reference, on odd lengths
   with GQA, segments, key masses and the power-law field, bf16 and float32, and at the benchmark
   shape. The first of `CANDIDATES` that compiles and passes is the one timed (the later ones
   are fallbacks: smaller tiles, exact division).
2. Timing: bf16, causal, 16 heads x 128, batch x length = 32k, lengths 2k..64k, "fwd" and
   "fwd+bwd" (value and gradients w.r.t. q, k, v of sum(out * ct)); median of repeated runs
   after a warm-up; TFLOP/s with the causal count 4*B*H*T^2*D/2 (x3.5 for fwd+bwd).
   Memory: XLA's compiled plan (argument + output + temp - alias bytes of the executable); the
   Pallas kernels allocate nothing outside it. Everything runs in this one process, so the
   process-wide peak of the allocator is not a per-configuration figure and is not reported.
   `--deadline_s` stops starting new configurations (the results so far are written).

Writes JSON (`--out`) after every configuration and prints a markdown table at the end.
"""

import argparse
import json
import os
import statistics
import sys
import time
import traceback
import zlib

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench.attention import causal_flops  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from ban_jax.ops import gravity as G  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.ops.gravity import pallas as GP  # pylint: disable=g-import-not-at-top,wrong-import-position

T0 = time.time()
SMOKE = False      # --smoke: tiny shapes, CPU interpret mode (tests this script only)
# Timed configurations, best first; the later ones are fallbacks if a compile fails.
CANDIDATES = [
    # The defaults: the tiles that compile without spills for sm_90 (pallas_registers.json).
    ("b128x64_w8s3_bwd-dkdv32x64-dq64x32_w8s2_rcp", dict()),
    ("b64x64_w4s2_bwd32x64_w4s1_rcp",
     dict(block_q=64, block_k=64, block_q_dkv=32, block_k_dkv=64, block_q_dq=64, block_k_dq=32,
          num_warps=4, num_stages=2, bwd_num_warps=4, bwd_num_stages=1)),
    ("b64x32_w4s1_bwd32x32_w4s1_div",
     dict(block_q=64, block_k=32, block_q_dkv=32, block_k_dkv=32, block_q_dq=32, block_k_dq=32,
          num_warps=4, num_stages=1, bwd_num_warps=4, bwd_num_stages=1, approx_recip=False)),
]
# Alternatives timed at one shape only, after the table, when time is left. Register and spill
# counts of each (sm_90, static) are in pallas_registers.json.
VARIANTS = [  # (name, overrides of the chosen options); the backward tiles first
    ("v1 tiles (spilled): fwd 128x64 w4s3, dkdv 64x128 + dq 128x64 w8s2",
     dict(num_warps=4, block_q_dkv=64, block_k_dkv=128, block_q_dq=128, block_k_dq=64)),
    ("bwd dkdv 16x64 + dq 64x16 w8s2", dict(block_q_dkv=16, block_k_dkv=64, block_q_dq=64,
                                            block_k_dq=16)),
    ("bwd dq 128x32 w8s2", dict(block_q_dq=128, block_k_dq=32)),
    ("bwd 32x32 w4s2 (mma.sync, no wgmma)",
     dict(block_q_dkv=32, block_k_dkv=32, block_q_dq=32, block_k_dq=32, bwd_num_warps=4)),
    ("bwd dq 64x64 w8s2", dict(block_q_dq=64, block_k_dq=64)),
    ("fwd 128x32 w8s3", dict(block_k=32)),
    ("fwd 128x128 w8s2", dict(block_k=128, num_stages=2)),
    ("fwd 128x64 w4s3 (v1 forward, spills)", dict(num_warps=4)),
    ("exact division", dict(approx_recip=False)),
]


def log(msg):
  print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def rel_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-300))


# ---------------------------------------------------------------------------------------------
# Correctness.


def problem(seed, b, t, h, kvh, d, features):
  rng = np.random.default_rng(seed)
  p = dict(q=rng.normal(size=(b, t, h, d)) * 0.3, k=rng.normal(size=(b, t, kvh, d)) * 0.3,
           v=rng.normal(size=(b, t, kvh, d)), mass=rng.uniform(1.0, 2.5, size=h),
           ct=rng.normal(size=(b, t, h, d)))
  kw = {}
  if features:
    n1 = t // 2
    seg = np.concatenate([np.full(n1, 1), np.full(t - n1 - 5, 2), np.zeros(5)]).astype(np.int32)
    pos = np.concatenate([np.arange(n1), np.arange(t - n1 - 5), np.zeros(5)]).astype(np.int32)
    kw = dict(segment_ids=np.broadcast_to(seg, (b, t)), positions=np.broadcast_to(pos, (b, t)))
    p.update(key_mass=rng.uniform(0.5, 2.0, size=(b, t)), pl_p=rng.uniform(0.2, 1.5, size=h),
             pl_a=rng.uniform(0.2, 1.0, size=h))
  return p, kw


def loss_and_grads(p, kw, impl, dtype, score="gravity", options=None):
  names = [n for n in ("q", "k", "v", "mass", "key_mass", "pl_p", "pl_a") if n in p]

  def loss(*args):
    a = dict(zip(names, args))
    out = G.gravity_attention(
        a["q"], a["k"], a["v"], a["mass"], causal=True, score=score,
        key_mass=a.get("key_mass"),
        power_law=(a["pl_p"], a["pl_a"]) if "pl_p" in a else None,
        implementation=impl, pallas_options=options, **kw)
    return jnp.sum(out.astype(a["mass"].dtype) * p["ct"].astype(a["mass"].dtype))
  fdt = jnp.float64 if dtype == jnp.float64 else jnp.float32
  args = [jnp.asarray(p[n], dtype if n in ("q", "k", "v") else fdt) for n in names]
  val, grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(names)))))(*args)
  return names, val, grads


def check(opts_name, opts, record):
  """Forward and gradients against float64; returns True when every error is in bounds."""
  cases = [  # (name, b, t, h, kvh, d, features, dtype, bound)
      ("odd_len_gqa_seg_keymass_powerlaw_bf16", 2, 300, 8, 2, 64, True, jnp.bfloat16, 3e-2),
      ("odd_len_gqa_seg_keymass_powerlaw_f32", 2, 300, 8, 2, 64, True, jnp.float32, 1e-4),
      ("bench_shape_T2048_d128_bf16", 1, 2048, 16, 16, 128, False, jnp.bfloat16, 3e-2),
  ]
  ok = True
  for name, b, t, h, kvh, d, features, dtype, bound in cases:
    if SMOKE:
      t, h, kvh, d = min(t, 40), min(h, 4), min(kvh, 2), min(d, 32)
    if dtype == jnp.float32:
      case_opts = GP.default_options(dtype=dtype, head_dim=d)._replace(
          approx_recip=opts.approx_recip, interpret=opts.interpret)
    else:
      case_opts = opts
    p, kw = problem(zlib.crc32(name.encode()) % 1000, b, t, h, kvh, d, features)
    t0 = time.time()
    try:
      names, val, grads = loss_and_grads(p, kw, "pallas", dtype, options=case_opts)
      jax.block_until_ready(grads)
    except Exception as e:  # pylint: disable=broad-except
      log(f"check {opts_name} {name}: FAILED to run: {type(e).__name__}: {str(e)[:600]}")
      record.append(dict(options=opts_name, case=name, status="error",
                         note=f"{type(e).__name__}: {str(e)[:2000]}"))
      return False
    run_s = time.time() - t0
    with jax.enable_x64(True):
      _, rval, rgrads = loss_and_grads(p, kw, "reference", jnp.float64)
    errs = {"loss": abs(float(val) - float(rval)) / abs(float(rval))}
    errs.update({n: rel_err(g, r) for n, g, r in zip(names, grads, rgrads)})
    finite = all(np.isfinite(np.asarray(g, np.float32)).all() for g in grads)
    passed = finite and max(errs.values()) < bound
    ok &= passed
    log(f"check {opts_name} {name}: {'ok' if passed else 'FAIL'} ({run_s:.1f}s) "
        + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    record.append(dict(options=opts_name, case=name, status="ok" if passed else "fail",
                       bound=bound, finite=bool(finite), rel_err=errs, compile_and_run_s=run_s))
  return ok


# ---------------------------------------------------------------------------------------------
# Timing.


def time_one(impl, mode, t, b, h=16, d=128, repeats=10, budget_s=1.5, options=None):
  keys = jax.random.split(jax.random.key(t), 4)
  q = (0.3 * jax.random.normal(keys[0], (b, t, h, d))).astype(jnp.bfloat16)
  k = (0.3 * jax.random.normal(keys[1], (b, t, h, d))).astype(jnp.bfloat16)
  v = jax.random.normal(keys[2], (b, t, h, d)).astype(jnp.bfloat16)
  ct = jax.random.normal(keys[3], (b, t, h, d)).astype(jnp.bfloat16)
  mass = jnp.full((h,), 1.5, jnp.float32)
  if impl == "cudnn":
    def attend(q, k, v):
      return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
  else:
    def attend(q, k, v):
      return G.gravity_attention(q, k, v, mass, causal=True, implementation=impl,
                                 pallas_options=options)
  if mode == "fwd":
    fn = jax.jit(attend)
  else:
    def loss(q, k, v):
      return jnp.sum(attend(q, k, v).astype(jnp.float32) * ct.astype(jnp.float32))
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  t0 = time.time()
  compiled = fn.lower(q, k, v).compile()
  compile_s = time.time() - t0
  planned = None
  try:
    ma = compiled.memory_analysis()
    planned = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
               - ma.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    pass
  jax.block_until_ready(compiled(q, k, v))
  times = []
  start = time.time()
  while len(times) < repeats:
    t1 = time.perf_counter()
    jax.block_until_ready(compiled(q, k, v))
    times.append(time.perf_counter() - t1)
    if time.time() - start > budget_s and len(times) >= 3:
      break
  ms = 1e3 * statistics.median(times)
  return dict(status="ok", ms=round(ms, 4), runs=len(times), compile_s=round(compile_s, 2),
              tflops=round(causal_flops(b, h, t, d, mode) / (ms * 1e-3) / 1e12, 2),
              planned_bytes=planned)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.path.join(REPO, "bench", "results",
                                                "attention_gpu_h100.json"))
  ap.add_argument("--lengths", default="2048,4096,8192,16384,32768,65536")
  ap.add_argument("--tokens", type=int, default=32768)
  ap.add_argument("--deadline_s", type=float, default=1e9)
  ap.add_argument("--check_only", action="store_true")
  ap.add_argument("--reference_max_len", type=int, default=2048)
  ap.add_argument("--xla_lengths", default="4096")
  ap.add_argument("--smoke", action="store_true")
  ap.add_argument("--variant_length", type=int, default=8192)
  ap.add_argument("--wait_file", default="",
                  help="after the checks, wait (up to --wait_max_s) for this file before timing, "
                       "so that a concurrent job does not share the GPU with the timings")
  ap.add_argument("--wait_max_s", type=float, default=150.0)
  args = ap.parse_args()
  global SMOKE
  SMOKE = args.smoke
  dev = jax.devices()[0]
  rec = dict(device=dev.device_kind, platform=dev.platform, jax_version=jax.__version__,
             config=dict(dtype="bfloat16", heads=16, kv_heads=16, head_dim=128, causal=True,
                         score="gravity", mass=1.5, tokens=args.tokens),
             flops_convention="causal: 4*B*H*T^2*D/2 forward, x3.5 forward+backward",
             memory="planned_bytes: XLA compiled memory_analysis (argument + output + temp - "
                    "alias)", checks=[], results=[], variants=[])

  def save():
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(rec, f, indent=1)

  log(f"{dev.device_kind}, jax {jax.__version__}")
  chosen = None
  for name, overrides in CANDIDATES:
    opts = GP.default_options(dtype=jnp.bfloat16, head_dim=128)._replace(**overrides)
    if SMOKE:
      opts = opts._replace(interpret=True, approx_recip=False)
    # float32 cases get the float32 defaults with the same approx_recip choice.
    if check(name, opts, rec["checks"]):
      chosen = (name, opts)
      break
    save()
  rec["chosen_options"] = None if chosen is None else dict(name=chosen[0], **chosen[1]._asdict())
  save()
  if chosen is None:
    log("no Pallas configuration passed: timing cuDNN and XLA only")
  if args.check_only:
    return
  pallas_options = None if chosen is None else chosen[1]
  if args.wait_file:
    t_wait = time.time()
    while not os.path.exists(args.wait_file) and time.time() - t_wait < args.wait_max_s:
      time.sleep(0.5)
    rec["waited_for_concurrent_job_s"] = round(time.time() - t_wait, 1)
    log(f"waited {time.time() - t_wait:.1f}s for {args.wait_file}")

  # A spread of lengths first, so that a deadline still leaves short, middle and long ones.
  lengths = [int(x) for x in args.lengths.split(",")]
  order = [4096, 16384, 65536, 2048, 8192, 32768]
  lengths = sorted(lengths, key=lambda t: order.index(t) if t in order else len(order))
  xla_lengths = {int(x) for x in args.xla_lengths.split(",") if x}
  plan = []
  for t in lengths:
    for impl in ("cudnn", "pallas"):
      if impl == "pallas" and chosen is None:
        continue
      for mode in ("fwd", "fwd+bwd"):
        plan.append((impl, mode, t))
  for t in lengths:
    if t <= args.reference_max_len:
      plan += [("reference", "fwd", t), ("reference", "fwd+bwd", t)]
    if t in xla_lengths:
      plan += [("xla", "fwd", t), ("xla", "fwd+bwd", t)]
  for impl, mode, t in plan:
    b = max(1, args.tokens // t)
    if time.time() - T0 > args.deadline_s:
      r = dict(status="skipped (deadline)")
    else:
      try:
        r = time_one(impl, mode, t, b, options=pallas_options)
      except Exception as e:  # pylint: disable=broad-except
        msg = f"{type(e).__name__}: {e}"
        oom = "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower()
        r = dict(status="oom" if oom else "error", note=msg[:1500])
        if not oom:
          traceback.print_exc()
    r.update(impl=impl, mode=mode, length=t, batch=b)
    rec["results"].append(r)
    save()
    log(f"{impl:9s} {mode:7s} T={t:6d} B={b:3d} {r['status']} ms={r.get('ms')} "
        f"TFLOP/s={r.get('tflops')} plan={r.get('planned_bytes')} {r.get('note', '')[:200]}")

  # Variants at one length (fwd and fwd+bwd), while time is left.
  if chosen is not None:
    for name, overrides in VARIANTS:
      if time.time() - T0 > args.deadline_s:
        break
      variant = chosen[1]._replace(**overrides)
      try:
        vt = args.variant_length
        vb = max(1, args.tokens // vt)
        r = dict(variant=name, length=vt, batch=vb,
                 **time_one("pallas", "fwd", vt, vb, options=variant),
                 fwdbwd=time_one("pallas", "fwd+bwd", vt, vb, options=variant))
      except Exception as e:  # pylint: disable=broad-except
        r = dict(variant=name, status="error", note=f"{type(e).__name__}: {str(e)[:800]}")
      rec["variants"].append(r)
      save()
      log(f"variant {name}: fwd {r.get('ms')} ms, fwd+bwd {r.get('fwdbwd', {}).get('ms')} ms "
          f"{r.get('note', '')[:200]}")
  save()

  print("\n| length | batch | impl | mode | status | ms | TFLOP/s | vs cuDNN | planned mem |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in sorted(rec["results"], key=lambda r: (r["length"], r["impl"], r["mode"])):
    base = next((x for x in rec["results"] if x["impl"] == "cudnn" and x["mode"] == r["mode"]
                 and x["length"] == r["length"] and "ms" in x), None)
    ratio = f"{base['ms'] / r['ms']:.2f}x" if base and "ms" in r else "-"
    mem = r.get("planned_bytes")
    print(f"| {r['length']} | {r['batch']} | {r['impl']} | {r['mode']} | {r['status']} | "
          f"{r.get('ms', '-')} | {r.get('tflops', '-')} | {ratio} | "
          f"{'-' if mem is None else f'{mem / 2**30:.2f} GiB'} |")
  log(f"wrote {args.out}")


if __name__ == "__main__":
  main()
