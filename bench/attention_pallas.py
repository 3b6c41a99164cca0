"""The fused Pallas kernel on one GPU, in one process, inside one deadline.

    python bench/attention_pallas.py --deadline_s=420 --out=bench/results/attention_gpu_h200.json
    python bench/attention_pallas.py --check_only          # correctness only
    python bench/attention_pallas.py --smoke               # this script on the CPU (interpret)

Phases, in this order (JSON rewritten after every row; `--deadline_s` stops starting rows):
1. `checks`: the forward and every gradient of `gravity_attention(implementation="pallas")`
   against the float64 reference, for the two-kernel and the fused backward: odd lengths with
   GQA, segments, key masses and the power law (bf16 and float32), the sweep's shape at 2k, and
   the default preset's shape (inverse_square, 8 heads x 32). A backward that fails here is
   not timed.
2. `sweep` at T = 4096 (B = 8, bf16, causal, 16 heads x 128): cuDNN and the XLA blockwise path,
   then every forward variant (fwd) and every backward variant (fwd+bwd, default forward tiles).
   Each timed variant's output (and gradients) are compared with the XLA path's on the same
   inputs (`agree`): one that disagrees by more than bf16 rounding is not eligible.
3. `presets`: the attention call of the presets' shapes: default (B 64, T 512, 8 heads x 32,
   inverse_square with key masses, power law and packed segments, bf16), the same with
   Gravity-2's score, smoke (float32, B 16, T 128, 4/2 heads x 16): XLA against the two best
   kernels; and cuDNN dot at the default's shape (the ban/transformer presets' attention).
4. `long`: the two fastest correct backward variants (with the fastest forward's tiles), cuDNN
   and XLA at 16k (B = 2) and 64k (B = 1).
Then `--done_file` is written (a concurrent `train_throughput.py --wait_file` starts timing).

Timing: median over samples after a warm-up; a sample is n back-to-back calls of the compiled
function, then one `block_until_ready` (n so that a sample lasts >= 20 ms: small shapes are
launch-bound and a training step launches them back to back too). TFLOP/s with the causal
count 4*B*H*T^2*D/2 (x3.5 for fwd+bwd). "plan": XLA's compiled memory (argument + output +
temp - alias bytes).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
import zlib

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from ban_jax.ops import gravity as G  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.ops.gravity import pallas as GP  # pylint: disable=g-import-not-at-top,wrong-import-position

T0 = time.time()
SMOKE = False      # --smoke: tiny shapes, CPU interpret mode (tests this script only)

# Backward configurations checked against float64 before any timing (name, Options overrides).
BACKWARDS = [
    ("two-kernel", dict(fused_backward=False)),
    ("fused", dict(fused_backward=True, block_q_dkv=16, block_k_dkv=64)),
]
# Forward variants (timed fwd). Register and spill counts of each (sm_90, static, a neighbouring
# Triton): pallas_registers.json.
FWD_VARIANTS = [
    ("fwd 128x64 w8s3 (default)", dict()),
    ("fwd 128x32 w8s3", dict(block_k=32)),
    ("fwd 128x128 w8s2", dict(block_k=128, num_stages=2)),
    ("fwd 128x64 w4s3 (v1, spills)", dict(num_warps=4)),
    ("fwd 64x64 w4s3", dict(block_q=64, block_k=64, num_warps=4)),
    ("fwd 128x64 w8s3 exact division", dict(approx_recip=False)),
]
# Backward variants (timed fwd+bwd with the default forward): two-kernel, then fused.
_ROUND1_DEFAULT = dict(block_q_dkv=32, block_k_dkv=64, block_q_dq=64, block_k_dq=32)
BWD_VARIANTS = [
    ("2k dkdv 32x64 + dq 64x32 w8s2 (default)", dict(fused_backward=False)),
    ("2k v1 dkdv 64x128 + dq 128x64 w8s2 (spills)",
     dict(fused_backward=False, block_q_dkv=64, block_k_dkv=128, block_q_dq=128, block_k_dq=64)),
    ("2k dkdv 16x64 + dq 64x16 w8s2",
     dict(fused_backward=False, block_q_dkv=16, block_k_dkv=64, block_q_dq=64, block_k_dq=16)),
    ("2k dq 128x32 w8s2", dict(fused_backward=False, block_q_dq=128, block_k_dq=32)),
    ("2k 32x32 w4s2 (mma.sync)",
     dict(fused_backward=False, block_q_dkv=32, block_k_dkv=32, block_q_dq=32, block_k_dq=32,
          bwd_num_warps=4)),
    ("fused 16x64 w8s2", dict(fused_backward=True, block_q_dkv=16, block_k_dkv=64)),
    ("fused 32x64 w8s2", dict(fused_backward=True, block_q_dkv=32, block_k_dkv=64)),
    ("fused 16x128 w8s2", dict(fused_backward=True, block_q_dkv=16, block_k_dkv=128)),
    ("fused 64x64 w8s2 (spills)", dict(fused_backward=True, block_q_dkv=64, block_k_dkv=64)),
    ("fused 32x32 w4s2 (mma.sync)", dict(fused_backward=True, block_q_dkv=32, block_k_dkv=32,
                                          bwd_num_warps=4)),
]
# Round 1's labels name its defaults then (the tiles before round 1 made the v1 tiles default).
BWD_VARIANTS = [(n, {**_ROUND1_DEFAULT, **o}) for n, o in BWD_VARIANTS]
# Round 2 (after round 1 on the H200): around the fastest backward (the v1 tiles), larger fused
# tiles, and forward tiles beside the two fastest.
FWD_VARIANTS_2 = [
    ("fwd 128x64 w8s3 (default)", dict()),
    ("fwd 128x64 w8s2", dict(num_stages=2)),
    ("fwd 128x64 w8s4", dict(num_stages=4)),
    ("fwd 64x64 w4s2", dict(block_q=64, block_k=64, num_warps=4, num_stages=2)),
    ("fwd 64x128 w4s3", dict(block_q=64, block_k=128, num_warps=4)),
]
BWD_VARIANTS_2 = [
    ("2k dkdv 64x128 + dq 128x64 w8s2 (default)", dict(fused_backward=False)),
    ("2k dkdv 64x128 + dq 128x64 w8s3", dict(fused_backward=False, bwd_num_stages=3)),
    ("2k dkdv 64x128 + dq 128x64 w4s2", dict(fused_backward=False, bwd_num_warps=4)),
    ("2k dkdv 128x128 + dq 128x64 w8s2", dict(fused_backward=False, block_q_dkv=128)),
    ("2k dkdv 64x128 + dq 128x128 w8s2", dict(fused_backward=False, block_k_dq=128)),
    ("2k dkdv 64x64 + dq 128x64 w8s2", dict(fused_backward=False, block_k_dkv=64)),
    ("2k dkdv 32x128 + dq 128x64 w8s2", dict(fused_backward=False, block_q_dkv=32)),
    ("2k dkdv 64x128 + dq 64x64 w8s2", dict(fused_backward=False, block_q_dq=64)),
    ("2k dkdv 64x128 + dq 128x32 w8s2", dict(fused_backward=False, block_k_dq=32)),
    ("fused 32x128 w8s2", dict(fused_backward=True, block_q_dkv=32)),
    ("fused 64x128 w8s2", dict(fused_backward=True)),
    ("fused 64x128 w4s2", dict(fused_backward=True, bwd_num_warps=4)),
]
VARIANT_SETS = {"round1": (FWD_VARIANTS, BWD_VARIANTS), "round2": (FWD_VARIANTS_2, BWD_VARIANTS_2)}
AGREE_BOUND = 3e-2   # bf16 kernel vs the XLA path (float32 accumulation) on the same inputs


def log(msg):
  print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def rel_err(x, ref):
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-300))


def causal_flops(b, h, t, d, mode):
  fwd = 4 * b * h * t * t * d / 2
  return fwd if mode == "fwd" else 3.5 * fwd


def nvidia_smi():
  try:
    return subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,"
         "temperature.gpu,power.draw,memory.used", "--format=csv"],
        capture_output=True, text=True, timeout=20, check=False).stdout.strip()
  except Exception as e:  # pylint: disable=broad-except
    return f"nvidia-smi: {type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------------
# Problems and calls.


def problem(seed, b, t, h, kvh, d, features):
  rng = np.random.default_rng(seed)
  p = dict(q=rng.normal(size=(b, t, h, d)) * 0.3, k=rng.normal(size=(b, t, kvh, d)) * 0.3,
           v=rng.normal(size=(b, t, kvh, d)), mass=rng.uniform(1.0, 2.5, size=h),
           ct=rng.normal(size=(b, t, h, d)))
  kw = {}
  if features:
    # Packed documents of random lengths per row, then a few padding positions.
    seg = np.zeros((b, t), np.int32)
    pos = np.zeros((b, t), np.int32)
    for row in range(b):
      start, doc = 0, 1
      while start < t - 5:
        n = int(min(rng.integers(t // 4, t), t - 5 - start))
        seg[row, start:start + n] = doc
        pos[row, start:start + n] = np.arange(n)
        start, doc = start + n, doc + 1
    kw = dict(segment_ids=seg, positions=pos)
    p.update(key_mass=rng.uniform(0.5, 2.0, size=(b, t)), pl_p=rng.uniform(0.2, 1.5, size=h),
             pl_a=rng.uniform(0.2, 1.0, size=h))
  return p, kw


def attend_fn(p, kw, impl, score, options):
  names = [n for n in ("q", "k", "v", "mass", "key_mass", "pl_p", "pl_a") if n in p]

  def attend(*args):
    a = dict(zip(names, args))
    out = G.gravity_attention(
        a["q"], a["k"], a["v"], None if score == "inverse_square" else a["mass"], causal=True,
        score=score, key_mass=a.get("key_mass"),
        power_law=(a["pl_p"], a["pl_a"]) if "pl_p" in a else None,
        implementation=impl, pallas_options=options, **kw)
    return out.astype(jnp.float32)
  return names, attend


def out_and_grads(p, kw, impl, dtype, score, options=None):
  """The output (float32) and the gradients of sum(out * ct) w.r.t. every input."""
  names, attend = attend_fn(p, kw, impl, score, options)
  fdt = jnp.float64 if dtype == jnp.float64 else jnp.float32
  args = [jnp.asarray(p[n], dtype if n in ("q", "k", "v") else fdt) for n in names]

  @jax.jit
  def run(*args):
    out, vjp = jax.vjp(attend, *args)
    return out, vjp(jnp.asarray(p["ct"], out.dtype))
  out, grads = run(*args)
  return names, out, grads


def check(opts_name, opts, record):
  """Forward and gradients against float64; True when every error is in bounds."""
  cases = [  # (name, b, t, h, kvh, d, features, dtype, score, bound)
      ("odd_len_gqa_seg_keymass_powerlaw_bf16", 2, 300, 8, 2, 64, True, jnp.bfloat16,
       "gravity", 3e-2),
      ("odd_len_gqa_seg_keymass_powerlaw_f32", 2, 300, 8, 2, 64, True, jnp.float32,
       "gravity", 1e-4),
      ("bench_shape_T2048_d128_bf16", 1, 2048, 16, 16, 128, False, jnp.bfloat16, "gravity",
       3e-2),
      ("default_preset_shape_inverse_square_bf16", 4, 512, 8, 8, 32, True, jnp.bfloat16,
       "inverse_square", 3e-2),
  ]
  ok = True
  for name, b, t, h, kvh, d, features, dtype, score, bound in cases:
    if SMOKE:
      b, t, h, kvh, d = min(b, 2), min(t, 40), min(h, 4), min(kvh, 2), min(d, 32)
    case_opts = opts
    if dtype == jnp.float32:
      case_opts = GP.default_options(dtype=dtype, head_dim=d, interpret=opts.interpret)._replace(
          approx_recip=opts.approx_recip, fused_backward=opts.fused_backward)
    p, kw = problem(zlib.crc32(name.encode()) % 1000, b, t, h, kvh, d, features)
    t0 = time.time()
    try:
      names, out, grads = out_and_grads(p, kw, "pallas", dtype, score, case_opts)
      jax.block_until_ready(grads)
    except Exception as e:  # pylint: disable=broad-except
      log(f"check {opts_name} {name}: FAILED to run: {type(e).__name__}: {str(e)[:600]}")
      record.append(dict(options=opts_name, case=name, status="error",
                         note=f"{type(e).__name__}: {str(e)[:2000]}"))
      return False
    run_s = time.time() - t0
    with jax.enable_x64(True):
      _, rout, rgrads = out_and_grads(p, kw, "reference", jnp.float64, score)
    errs = {"out": rel_err(out, rout)}
    for n, g, r in zip(names, grads, rgrads):
      if np.linalg.norm(np.asarray(r)) == 0:       # unused (inverse_square's mass): exact zero
        errs[n] = float(np.linalg.norm(np.asarray(g, np.float64)))
      else:
        errs[n] = rel_err(g, r)
    finite = all(np.isfinite(np.asarray(g, np.float32)).all() for g in grads)
    passed = finite and max(errs.values()) < bound
    ok &= passed
    log(f"check {opts_name} {name}: {'ok' if passed else 'FAIL'} ({run_s:.1f}s) "
        + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    record.append(dict(options=opts_name, case=name, status="ok" if passed else "fail",
                       bound=bound, finite=bool(finite), rel_err=errs, compile_and_run_s=run_s))
  return ok


def bench_inputs(t, b, h=16, d=128, kvh=None, dtype=jnp.bfloat16, features=False):
  kvh = kvh or h
  keys = jax.random.split(jax.random.key(t * 7 + b), 8)
  q = (0.3 * jax.random.normal(keys[0], (b, t, h, d))).astype(dtype)
  k = (0.3 * jax.random.normal(keys[1], (b, t, kvh, d))).astype(dtype)
  v = jax.random.normal(keys[2], (b, t, kvh, d)).astype(dtype)
  ct = jax.random.normal(keys[3], (b, t, h, d)).astype(dtype)
  extra = dict(mass=jnp.full((h,), 1.5, jnp.float32))
  if features:
    p, kw = problem(t + b, b, t, h, kvh, d, True)
    extra.update(key_mass=jnp.asarray(p["key_mass"], jnp.float32),
                 power_law=(jnp.asarray(p["pl_p"], jnp.float32),
                            jnp.asarray(p["pl_a"], jnp.float32)),
                 segment_ids=jnp.asarray(kw["segment_ids"]),
                 positions=jnp.asarray(kw["positions"]))
  return (q, k, v), ct, extra


def make_fn(impl, mode, ct, extra, score="gravity", options=None):
  if impl == "cudnn":
    def attend(q, k, v):
      return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                          implementation=None if SMOKE else "cudnn")
  else:
    mass = None if score == "inverse_square" else extra["mass"]
    kw = {n: extra[n] for n in ("key_mass", "power_law", "segment_ids", "positions")
          if n in extra}

    def attend(q, k, v):
      return G.gravity_attention(q, k, v, mass, causal=True, score=score, implementation=impl,
                                 pallas_options=options, **kw)
  if mode == "fwd":
    return jax.jit(attend)

  def loss(q, k, v):
    return jnp.sum(attend(q, k, v).astype(jnp.float32) * ct.astype(jnp.float32))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def time_compiled(compiled, args, budget_s=1.0, max_samples=15):
  out = jax.block_until_ready(compiled(*args))          # warm-up (and the result to compare)
  t1 = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  one = time.perf_counter() - t1
  n = 1 if SMOKE else max(1, min(200, int(0.02 / max(one, 1e-6))))
  samples = []
  start = time.time()
  while len(samples) < max_samples:
    t1 = time.perf_counter()
    res = None
    for _ in range(n):
      res = compiled(*args)
    jax.block_until_ready(res)
    samples.append((time.perf_counter() - t1) / n)
    if time.time() - start > budget_s and len(samples) >= 3:
      break
  spread = (max(samples) - min(samples)) / statistics.median(samples)
  return out, 1e3 * statistics.median(samples), len(samples), n, spread


def flat_outputs(out, mode):
  if mode == "fwd":
    return [out]
  _, grads = out
  return list(grads)


def time_one(impl, mode, args, ct, extra, flops, score="gravity", options=None, ref=None):
  """Compiles and times one configuration; `ref`: outputs to compare with (agreement)."""
  fn = make_fn(impl, mode, ct, extra, score, options)
  t0 = time.time()
  compiled = fn.lower(*args).compile()
  compile_s = time.time() - t0
  planned = None
  try:
    ma = compiled.memory_analysis()
    planned = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
               - ma.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    pass
  out, ms, samples, calls, spread = time_compiled(compiled, args)
  r = dict(status="ok", ms=round(ms, 4), samples=samples, calls_per_sample=calls,
           spread=round(spread, 3), compile_s=round(compile_s, 2),
           tflops=round(flops / (ms * 1e-3) / 1e12, 2) if flops else None, planned_bytes=planned)
  outs = flat_outputs(out, mode)
  if ref is not None:
    # On the device: the 4k gradients are 67M elements each.
    errs = [float(jnp.linalg.norm(jnp.ravel(a.astype(jnp.float32) - b.astype(jnp.float32)))
                  / jnp.linalg.norm(jnp.ravel(b.astype(jnp.float32)))) for a, b in zip(outs, ref)]
    finite = all(bool(jnp.isfinite(a).all()) for a in outs)
    r["agree_rel_err"] = [round(e, 6) for e in errs]
    r["agree"] = bool(finite and max(errs) < AGREE_BOUND)
  return r, outs


# ---------------------------------------------------------------------------------------------


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.path.join(REPO, "bench", "results",
                                                "attention_gpu_h200.json"))
  ap.add_argument("--deadline_s", type=float, default=1e9)
  ap.add_argument("--done_file", default="")
  ap.add_argument("--check_only", action="store_true")
  ap.add_argument("--smoke", action="store_true")
  ap.add_argument("--phases", default="checks,sweep,presets,long")
  ap.add_argument("--sweep_length", type=int, default=4096)
  ap.add_argument("--long_lengths", default="16384,65536")
  ap.add_argument("--tokens", type=int, default=32768)
  ap.add_argument("--variant_set", default="round1", choices=sorted(VARIANT_SETS))
  ap.add_argument("--backwards", default="two-kernel,fused",
                  help="which of BACKWARDS the float64 checks run")
  args = ap.parse_args()
  global SMOKE
  SMOKE = args.smoke
  phases = set(args.phases.split(","))
  fwd_variants, bwd_variants = VARIANT_SETS[args.variant_set]
  dev = jax.devices()[0]
  rec = dict(device=dev.device_kind, platform=dev.platform, jax_version=jax.__version__,
             nvidia_smi_start=nvidia_smi(),
             flops_convention="causal: 4*B*H*T^2*D/2 forward, x3.5 forward+backward",
             memory="planned_bytes: XLA compiled memory_analysis (argument + output + temp - "
                    "alias)", checks=[], passed_backwards=[], sweep=[], long=[], presets=[])

  def save():
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
      json.dump(rec, f, indent=1)
    os.replace(args.out + ".tmp", args.out)

  def late():
    return time.time() - T0 > args.deadline_s

  log(f"{dev.device_kind}, jax {jax.__version__}\n{rec['nvidia_smi_start']}")
  base = GP.default_options(dtype=jnp.bfloat16, head_dim=128)
  if SMOKE:
    base = base._replace(interpret=True, approx_recip=False)
  try:
    # 1. Correctness.
    passed = {}
    if "checks" in phases:
      for name, overrides in BACKWARDS:
        if name not in args.backwards.split(","):
          passed[name] = overrides           # checked in an earlier run (its JSON says so)
          continue
        if check(name, base._replace(**overrides), rec["checks"]):
          passed[name] = overrides
        save()
    else:
      passed = dict(BACKWARDS)
    rec["passed_backwards"] = sorted(passed)
    save()
    if args.check_only:
      return

    def eligible(overrides):
      return ("fused" if overrides.get("fused_backward") else "two-kernel") in passed

    def run_row(table, label, impl, mode, t, b, score="gravity", options=None, ref=None,
                h=16, d=128, kvh=None, dtype=jnp.bfloat16, features=False, **extra_fields):
      if SMOKE:
        t, b, h, d = min(t, 64), min(b, 2), min(h, 4), min(d, 32)
        kvh = min(kvh, h) if kvh else None
      row = dict(label=label, impl=impl, mode=mode, length=t, batch=b, heads=h, head_dim=d,
                 kv_heads=kvh or h, dtype=jnp.dtype(dtype).name, score=score,
                 features=features, **extra_fields)
      if options is not None:
        row["options"] = options._asdict()
      outs = None
      if late():
        row["status"] = "skipped (deadline)"
      else:
        try:
          xs, ct, extra = bench_inputs(t, b, h, d, kvh, dtype, features)
          flops = causal_flops(b, h, t, d, mode)
          r, outs = time_one(impl, mode, xs, ct, extra, flops, score, options, ref)
          row.update(r)
        except Exception as e:  # pylint: disable=broad-except
          msg = f"{type(e).__name__}: {e}"
          oom = "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower()
          row.update(status="oom" if oom else "error", note=msg[:1500])
          if not oom:
            traceback.print_exc()
      table.append(row)
      save()
      log(f"{label:46s} {mode:7s} T={t:6d} B={b:3d} {row['status']} ms={row.get('ms')} "
          f"TFLOP/s={row.get('tflops')} agree={row.get('agree')} "
          f"{row.get('note', '')[:200]}")
      return row, outs

    # 2. The sweep at 4k.
    best_fwd, bwd_rows = {}, []
    if "sweep" in phases and passed:
      t = args.sweep_length
      b = max(1, args.tokens // t)
      sw = rec["sweep"]
      run_row(sw, "cudnn", "cudnn", "fwd", t, b)
      run_row(sw, "cudnn", "cudnn", "fwd+bwd", t, b)
      _, ref_f = run_row(sw, "xla", "xla", "fwd", t, b)
      _, ref_b = run_row(sw, "xla", "xla", "fwd+bwd", t, b)
      fwd_rows = []
      for name, overrides in fwd_variants:
        row, _ = run_row(sw, name, "pallas", "fwd", t, b, options=base._replace(**overrides),
                         ref=ref_f, variant=name, kind="fwd")
        fwd_rows.append((row, overrides))
      good = [(r["ms"], o) for r, o in fwd_rows if r.get("agree")]
      best_fwd = min(good, key=lambda x: x[0])[1] if good else {}
      rec["best_forward"] = next(n for n, o in fwd_variants if o == best_fwd)
      for name, overrides in bwd_variants:
        if not eligible(overrides):
          continue
        row, _ = run_row(sw, name, "pallas", "fwd+bwd", t, b,
                         options=base._replace(**overrides), ref=ref_b, variant=name,
                         kind="bwd")
        bwd_rows.append((row, overrides))
      save()

    # The best two backward variants (with the best forward tiles).
    ranked = sorted([(r["ms"], n, o) for (r, o), (n, _) in
                     zip(bwd_rows, [v for v in bwd_variants if eligible(v[1])])
                     if r.get("agree")], key=lambda x: x[0])
    best = [(n, base._replace(**{**best_fwd, **o})) for _, n, o in ranked[:2]]
    if not best:
      best = [(n, base._replace(**o)) for n, o in bwd_variants if eligible(o)][:2]
    rec["best_two"] = [dict(name=n, options=o._asdict()) for n, o in best]
    save()
    # 3. The presets' shapes (before the long lengths: `auto` is decided from these).
    if "presets" in phases and best:
      ps = rec["presets"]
      shapes = [  # (label, b, t, h, kvh, d, dtype, score)
          ("default preset (inverse_square, key masses, power law, segments)", 64, 512, 8, 8,
           32, jnp.bfloat16, "inverse_square"),
          ("default preset shape, Gravity-2 score", 64, 512, 8, 8, 32, jnp.bfloat16,
           "gravity"),
          ("smoke preset (float32)", 16, 128, 4, 2, 16, jnp.float32, "inverse_square"),
      ]
      for label, b, t, h, kvh, d, dtype, score in shapes:
        for mode in ("fwd", "fwd+bwd"):
          common = dict(h=h, d=d, kvh=kvh, dtype=dtype, features=True, score=score)
          _, ref = run_row(ps, f"{label}: xla", "xla", mode, t, b, **common)
          for n, o in best:
            if dtype == jnp.float32:   # float32 has its own (smaller) default tiles
              o = GP.default_options(dtype=dtype, head_dim=d, interpret=o.interpret)._replace(
                  fused_backward=o.fused_backward, approx_recip=o.approx_recip)
            run_row(ps, f"{label}: pallas {n}", "pallas", mode, t, b, options=o, ref=ref,
                    **common)
      for mode in ("fwd", "fwd+bwd"):
        run_row(ps, "ban/transformer presets' shape: cudnn dot", "cudnn", mode, 512, 64, h=8,
                d=32)
    # 4. The best two at long lengths.
    if "long" in phases and best:
      for t in [int(x) for x in args.long_lengths.split(",") if x]:
        b = max(1, args.tokens // t)
        lg = rec["long"]
        run_row(lg, "cudnn", "cudnn", "fwd", t, b)
        run_row(lg, "cudnn", "cudnn", "fwd+bwd", t, b)
        _, ref_f = run_row(lg, "xla", "xla", "fwd", t, b)
        run_row(lg, f"best1 {best[0][0]}", "pallas", "fwd", t, b, options=best[0][1], ref=ref_f)
        for n, o in best:
          run_row(lg, n, "pallas", "fwd+bwd", t, b, options=o)
        run_row(lg, "xla", "xla", "fwd+bwd", t, b)

  finally:
    rec["nvidia_smi_end"] = nvidia_smi()
    rec["elapsed_s"] = round(time.time() - T0, 1)
    save()
    if args.done_file:
      with open(args.done_file, "w") as f:
        f.write("done\n")
  summary(rec)
  log(f"wrote {args.out}")


def summary(rec):
  print("\n| phase | label | mode | T | B | status | ms | TFLOP/s | agree |")
  print("|---|---|---|---|---|---|---|---|---|")
  for phase in ("sweep", "long", "presets"):
    for r in rec[phase]:
      print(f"| {phase} | {r['label'][:60]} | {r['mode']} | {r['length']} | {r['batch']} | "
            f"{r['status']} | {r.get('ms', '-')} | {r.get('tflops', '-')} | "
            f"{r.get('agree', '-')} |")


if __name__ == "__main__":
  main()
