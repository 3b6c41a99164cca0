"""Time and peak memory of gravity attention implementations against dot-product attention.

    python bench/attention.py                       # CPU preset: f32, B=1, 8 heads x 64, 512..16k
    python bench/attention.py --preset=gpu          # GPU table: bf16, 16 heads x 128, B*T = 32k,
                                                    # 2k..64k, cuDNN + reference + xla + pallas
    python bench/attention.py --impls=xla,pallas --lengths=4096,8192

Columns (`--impls`): `reference` (gravity, materialised scores), `xla` (gravity, blockwise
custom_vjp), `pallas` (gravity, the fused kernels of `ban_jax.ops.gravity.pallas`),
`dot` (`jax.nn.dot_product_attention(implementation="xla")`, materialised dot-product; also what
`implementation=None` gives in JAX 0.11) and `cudnn` (`jax.nn.dot_product_attention(
implementation="cudnn")`, flash dot-product on NVIDIA GPUs, bf16/fp16 only).
Modes: `fwd` and `fwd+bwd` (value and gradients w.r.t. query, key and value of sum(out * ct)).
All causal.

Every (implementation, mode, length) runs in its own subprocess, so that
- memory peaks are per configuration: on GPU `device.memory_stats()["peak_bytes_in_use"]`; on
  CPU the process's peak resident set (ru_maxrss, which includes ~0.3-0.5 GB of JAX runtime),
- a run that exhausts memory fails cleanly: the child runs under an address-space limit
  (`--mem_limit_gb`, CPU; 75% of RAM by default, virtual memory, which the JAX runtime already
  uses ~1.5 GB of) and the parent records "oom" with the allocation that failed, instead of
  the machine swapping or the kernel's OOM killer picking a process.
Beside the measured peaks, each configuration reports XLA's compiled memory analysis
(`jit(f).lower(...).compile().memory_analysis()`): argument + output + temporary buffer bytes of
the executable's static buffer assignment, i.e. what XLA plans to hold live at its peak, not
counting allocator overhead or the runtime. It is known before running, so configurations
that failed for memory at a shorter length are only compiled and reported as "oom (planned)"
with XLA's plan (CPU), or skipped (GPU, where compiling alone autotunes into the same OOM).

TFLOP/s use the causal count 4*B*H*T^2*D/2 for the forward and 3.5 times that for
forward+backward (the convention of the FlashAttention benchmarks).

Results: a printed table and JSON under bench/results/attention_<backend>.json, rewritten
(atomically) after every configuration. A lent GPU's command runs at most 10 minutes, less than
the whole GPU table takes, so the table is filled in parts by one command repeated:

    python bench/attention.py --preset=gpu --deadline_s=540 --resume --out=R.json

`--deadline_s` stops starting configurations (and kills a running one, recorded as "deadline")
before the limit; `--resume` keeps the finished rows of R.json and runs only the rest. Every
row records its device and JAX version, and a resumed run refuses a file written for other
shapes.
"""

import argparse
import json
import importlib.util
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = {
    "cpu": dict(dtype="float32", heads=8, kv_heads=8, head_dim=64, tokens=None, batch=1,
                lengths=[512, 1024, 2048, 4096, 8192, 16384],
                impls=["reference", "xla", "dot"]),
    "gpu": dict(dtype="bfloat16", heads=16, kv_heads=16, head_dim=128, tokens=32768, batch=None,
                lengths=[2048, 4096, 8192, 16384, 32768, 65536],
                impls=["cudnn", "reference", "xla", "pallas"]),
}
MODES = ("fwd", "fwd+bwd")
# Row statuses that a resumed run keeps; "error" and "deadline" rows run again (a "timeout"
# row had its whole --timeout_s).
FINAL_STATUSES = ("ok", "oom", "oom (planned)", "oom (skipped)", "unavailable", "timeout")
# The parts of the record's config that must match for --resume to add rows to it.
RESUME_KEYS = ("dtype", "heads", "kv_heads", "head_dim", "block")


def causal_flops(batch, heads, length, head_dim, mode):
  """FLOPs of causal attention (half the score matrix); fwd+bwd counted as 3.5x the forward."""
  fwd = 4 * batch * heads * length * length * head_dim / 2
  return fwd if mode == "fwd" else 3.5 * fwd


# ---------------------------------------------------------------------------------------------
# Worker: one configuration, in its own process.


def worker(cfg, result):
  """Runs one configuration, filling `result` (printed as JSON by the child)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, REPO)
  from ban_jax.ops import gravity  # pylint: disable=g-import-not-at-top

  dtype = jnp.dtype(cfg["dtype"])
  b, t, h, kvh, d = cfg["batch"], cfg["length"], cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
  keys = jax.random.split(jax.random.key(0), 4)
  # q, k at a scale where distances are O(1) (gravity weights neither flat nor one-hot).
  q = (0.3 * jax.random.normal(keys[0], (b, t, h, d))).astype(dtype)
  k = (0.3 * jax.random.normal(keys[1], (b, t, kvh, d))).astype(dtype)
  v = jax.random.normal(keys[2], (b, t, kvh, d)).astype(dtype)
  ct = jax.random.normal(keys[3], (b, t, h, d)).astype(dtype)
  mass = jnp.full((h,), 1.5, jnp.float32)
  impl = cfg["impl"]
  dev = jax.devices()[0]
  result.update(device_kind=dev.device_kind, jax_version=jax.__version__)

  if impl in ("dot", "cudnn"):
    backend_impl = "xla" if impl == "dot" else "cudnn"

    def attend(q, k, v):
      return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=backend_impl)
  else:
    if impl == "pallas":
      if importlib.util.find_spec("ban_jax.ops.gravity.pallas") is None:
        result.update(status="unavailable", note="ban_jax.ops.gravity.pallas not found")
        return result

    def attend(q, k, v):
      return gravity.gravity_attention(q, k, v, mass, causal=True, implementation=impl,
                                       block_q=cfg["block"], block_k=cfg["block"])

  if cfg["mode"] == "fwd":
    fn = jax.jit(attend)
  else:
    def loss(q, k, v):
      return jnp.sum(attend(q, k, v).astype(jnp.float32) * ct.astype(jnp.float32))
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

  t0 = time.perf_counter()
  compiled = fn.lower(q, k, v).compile()
  compile_s = time.perf_counter() - t0
  result["compile_s"] = round(compile_s, 2)
  try:
    ma = compiled.memory_analysis()
    planned = dict(argument=ma.argument_size_in_bytes, output=ma.output_size_in_bytes,
                   temp=ma.temp_size_in_bytes, alias=ma.alias_size_in_bytes)
    planned["total"] = planned["argument"] + planned["output"] + planned["temp"] - planned["alias"]
    result["planned_bytes"] = planned
  except Exception as e:  # pylint: disable=broad-except
    result["planned_bytes"] = None
    result["note"] = f"no memory analysis: {e}"
  if cfg.get("compile_only"):
    result["status"] = "oom (planned)"
    return result

  jax.block_until_ready(compiled(q, k, v))             # warm-up
  times = []
  budget_s, start = cfg["time_budget_s"], time.perf_counter()
  while len(times) < cfg["repeats"]:
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(q, k, v))
    times.append(time.perf_counter() - t0)
    if time.perf_counter() - start > budget_s and len(times) >= 1:
      break
  ms = 1e3 * statistics.median(times)
  result.update(status="ok", ms=round(ms, 3), ms_min=round(1e3 * min(times), 3),
                runs=len(times),
                tflops=round(causal_flops(b, h, t, d, cfg["mode"]) / (ms * 1e-3) / 1e12, 4),
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
  if dev.platform != "cpu":
    stats = dev.memory_stats() or {}
    result["device_peak_bytes"] = stats.get("peak_bytes_in_use")
  return result


def child_main(cfg_json):
  cfg = json.loads(cfg_json)
  if cfg.get("mem_limit_bytes"):
    resource.setrlimit(resource.RLIMIT_AS, (cfg["mem_limit_bytes"], cfg["mem_limit_bytes"]))
  result = {}
  try:
    result = worker(cfg, result)
  except Exception as e:  # pylint: disable=broad-except
    # Keep what was measured before the failure (XLA's plan, compile time).
    msg = f"{type(e).__name__}: {e}"
    oom = any(s in msg for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory",
                                 "MemoryError", "bad_alloc", "Failed to allocate"))
    result.update(status="oom" if oom else "error", note=msg[:500])
  print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Driver.


def run_child(cfg, timeout_s, timeout_status="timeout"):
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if cfg["preset"] == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
  env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"      # GPU: measure, don't reserve 75%
  try:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(cfg)],
                          capture_output=True, text=True, timeout=timeout_s, env=env)
  except subprocess.TimeoutExpired:
    return dict(status=timeout_status, note=f"over {timeout_s:.0f} s")
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  tail = (proc.stderr or proc.stdout)[-400:]
  oom = proc.returncode in (-9, -6, 134, 137) or "alloc" in tail.lower() or "memory" in tail.lower()
  return dict(status="oom" if oom else "error",
              note=f"child exited with {proc.returncode}: {tail.strip()[-300:]}")


def fmt_bytes(n):
  return "-" if n is None else f"{n / 2**30:.2f}G" if n >= 2**30 else f"{n / 2**20:.0f}M"


def print_table(results, impls, lengths):
  print()
  head = ("| length | batch | impl | mode | status | ms (median) | ms (min) | TFLOP/s | "
          "planned mem | peak mem |")
  print(head)
  print("|" + "---|" * (head.count("|") - 1))
  for length in lengths:
    for impl in impls:
      for mode in MODES:
        r = next((r for r in results if r["length"] == length and r["impl"] == impl
                  and r["mode"] == mode), None)
        if r is None:
          continue
        planned = (r.get("planned_bytes") or {}).get("total")
        peak = r.get("device_peak_bytes") or r.get("peak_rss_bytes")
        ms = f"{r['ms']:.1f}" if "ms" in r else "-"
        ms_min = f"{r['ms_min']:.1f}" if "ms_min" in r else "-"
        tf = f"{r['tflops']:.3f}" if "tflops" in r else "-"
        print(f"| {length} | {r['batch']} | {impl} | {mode} | {r['status']} | {ms} | {ms_min} | "
              f"{tf} | {fmt_bytes(planned)} | {fmt_bytes(peak)} |")


def load_previous(path, args, preset):
  """The finished rows of an earlier run's JSON at `path`, for --resume ([] if none)."""
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      record = json.load(f)
    old_cfg, rows = record["config"], record["results"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    sys.exit(f"--resume: {path} is not a results file of this script ({e}); point --out at "
             "another path or delete it.")
  want = dict(preset, block=args.block)
  diff = [f"{k}: file {old_cfg.get(k)!r} vs now {want[k]!r}" for k in RESUME_KEYS
          if old_cfg.get(k) != want[k]]
  if record.get("preset") != args.preset:
    diff.insert(0, f"preset: file {record.get('preset')!r} vs now {args.preset!r}")
  if diff:
    sys.exit(f"--resume: {path} was written for other shapes ({'; '.join(diff)}); use the "
             "same flags as the run that wrote it, or another --out.")
  return [r for r in rows if r.get("status") in FINAL_STATUSES]


def record_of(args, preset, backend, mem_limit, results, final=False):
  device = platform.processor() or "cpu"
  jax_version = None
  if final:
    import jax  # pylint: disable=g-import-not-at-top
    jax_version = jax.__version__
    if backend != "cpu":
      try:
        device = jax.devices()[0].device_kind
      except Exception:  # pylint: disable=broad-except
        pass
  kinds = sorted({r["device_kind"] for r in results if r.get("device_kind")})
  return dict(
      preset=args.preset, backend=backend, device=device, complete=final,
      device_kinds=kinds,
      cpu_count=os.cpu_count(), jax_version=jax_version, load_avg=os.getloadavg(),
      config=dict(dtype=preset["dtype"], heads=preset["heads"], kv_heads=preset["kv_heads"],
                  head_dim=preset["head_dim"], causal=True, score="gravity", mass=1.5,
                  block=args.block, mem_limit_bytes=mem_limit),
      flops_convention="causal: 4*B*H*T^2*D/2 forward, x3.5 forward+backward",
      memory_fields=dict(
          planned_bytes="XLA compiled memory_analysis: argument + output + temp - alias bytes",
          peak_rss_bytes="CPU: child process peak resident set (includes the JAX runtime)",
          device_peak_bytes="GPU: device.memory_stats()['peak_bytes_in_use'] of the child"),
      results=results)


def write_json(path, record):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=1)
  os.replace(path + ".tmp", path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
  parser.add_argument("--impls", help="comma-separated subset of reference,xla,pallas,dot")
  parser.add_argument("--lengths", help="comma-separated sequence lengths")
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--block", type=int, default=512, help="xla block size (q and k)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--time_budget_s", type=float, default=20.0,
                      help="stop repeating a configuration after this long")
  parser.add_argument("--timeout_s", type=float, default=600.0, help="per configuration")
  parser.add_argument("--mem_limit_gb", type=float, default=None,
                      help="CPU: address-space (virtual memory) limit of each child, so that "
                           "an OOM is an allocation error, not the kernel's OOM killer "
                           "(default: 75%% of RAM)")
  parser.add_argument("--out", help="JSON path (default bench/results/attention_<backend>.json)")
  parser.add_argument("--resume", action="store_true",
                      help="keep the finished rows of --out and run only the missing ones")
  parser.add_argument("--deadline_s", type=float, default=None,
                      help="wall-clock budget of this invocation: no configuration starts or "
                           "runs past it (then rerun with --resume)")
  parser.add_argument("--plan_after_oom", type=int, default=None,
                      help="compile (not run) lengths past an OOM to report XLA's plan "
                           "(default: 1 on CPU, 0 on GPU)")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child_main(args.child)
    return

  preset = dict(PRESETS[args.preset])
  impls = args.impls.split(",") if args.impls else preset["impls"]
  lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else preset["lengths"]
  modes = args.modes.split(",")
  backend = "cpu" if args.preset == "cpu" else "gpu"
  mem_limit = None
  if backend == "cpu":
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mem_limit = int((args.mem_limit_gb * 2**30) if args.mem_limit_gb else 0.75 * total)
  out_path = args.out or os.path.join(REPO, "bench", "results", f"attention_{backend}.json")
  plan_after_oom = (backend == "cpu") if args.plan_after_oom is None else bool(args.plan_after_oom)

  results = load_previous(out_path, args, preset) if args.resume else []
  if results:
    print(f"--resume: {len(results)} finished rows kept from {out_path}", flush=True)
  over_limit = {(r["impl"], r["mode"]) for r in results  # failed for memory at a shorter length
                if r["status"] in ("oom", "oom (planned)", "oom (skipped)")}
  done = {(r["length"], r["impl"], r["mode"]) for r in results}
  todo = [(length, impl, mode) for length in lengths for impl in impls for mode in modes
          if (length, impl, mode) not in done]
  t_start = time.time()
  stopped = False
  for length, impl, mode in todo:
    batch = preset["batch"] or max(1, preset["tokens"] // length)
    timeout_s, timeout_status = args.timeout_s, "timeout"
    if args.deadline_s is not None:
      left = args.deadline_s - (time.time() - t_start)
      if left < 10:
        stopped = True
        break
      if left < timeout_s:
        timeout_s, timeout_status = left, "deadline"
    cfg = dict(preset=args.preset, impl=impl, mode=mode, length=length, batch=batch,
               dtype=preset["dtype"], heads=preset["heads"], kv_heads=preset["kv_heads"],
               head_dim=preset["head_dim"], block=args.block, repeats=args.repeats,
               time_budget_s=args.time_budget_s, mem_limit_bytes=mem_limit)
    t0 = time.time()
    if (impl, mode) in over_limit and not plan_after_oom:
      r = dict(status="oom (skipped)", note="ran out of memory at a shorter length")
    else:
      # Past an OOM only XLA's plan is reported: running it cannot fit.
      cfg["compile_only"] = (impl, mode) in over_limit
      r = run_child(cfg, timeout_s, timeout_status)
    if r.get("status") == "deadline":         # killed at the deadline: not a result, rerun it
      print(f"[{time.time() - t_start:6.0f}s] {impl:9s} {mode:7s} T={length:6d} stopped at "
            "the deadline", flush=True)
      stopped = True
      break
    if r.get("status") == "ok" and mem_limit and (r.get("planned_bytes") or {}).get(
        "total", 0) > mem_limit:
      r["note"] = "ran although the plan exceeds the limit"
    if r.get("status") in ("oom", "oom (planned)"):
      over_limit.add((impl, mode))
    r.update(impl=impl, mode=mode, length=length, batch=batch,
             wall_s=round(time.time() - t0, 1))
    results.append(r)
    write_json(out_path, record_of(args, preset, backend, mem_limit, results))
    planned = (r.get("planned_bytes") or {}).get("total")
    print(f"[{time.time() - t_start:6.0f}s] {impl:9s} {mode:7s} T={length:6d} B={batch:3d} "
          f"{r.get('status'):14s} ms={r.get('ms', '-')} planned={fmt_bytes(planned)} "
          f"peak={fmt_bytes(r.get('device_peak_bytes') or r.get('peak_rss_bytes'))} "
          f"{r.get('note', '')[:160]}", flush=True)

  if stopped:
    write_json(out_path, record_of(args, preset, backend, mem_limit, results))
    print_table(results, impls, lengths)
    print(f"\nstopped at --deadline_s={args.deadline_s:.0f}; {len(results)} rows in {out_path}. "
          "Run the same command with --resume to finish.")
    return
  write_json(out_path, record_of(args, preset, backend, mem_limit, results, final=True))
  print_table(results, impls, lengths)
  print(f"\nwrote {out_path} ({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
  main()
