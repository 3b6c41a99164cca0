"""Registers, spills and shared memory of the Pallas-Triton gravity kernels, on any machine.

    pip install triton            # only for this script: its compiler and the ptxas it bundles
    python bench/pallas_registers.py --out=bench/results/pallas_registers.json

No GPU is needed. Each configuration in `CONFIGS` is lowered the way it would be for a CUDA
device (`lower(lowering_platforms=("cuda",))` at the benchmark shape: bf16, causal, 16 heads
x 128, B x T = 8 x 4096), the Triton IR of each of the three kernels (forward, dK/dV, dQ) is
captured from the Pallas lowering, compiled for sm_90a by the `triton` package with the
kernel's num_warps / num_stages, and the PTX is assembled by the ptxas the package ships, with
`-v`. Reported per kernel: registers per thread, spill stores / loads (bytes per thread),
stack frame, shared memory, and whether the matrix products became wgmma (Hopper) or mma.sync.

What this can and cannot say. It measures the code the compiler emits, not its speed. The
Triton inside jaxlib (what a real run uses) is not the `triton` package: the pipelines are
close relatives but not identical, so the figures are those of a neighbouring compiler. A
kernel that spills here is very likely to spill there; zero spills is necessary for a fast
kernel, not sufficient.

Scores: "gravity" (the seed's) and "dot" (the same kernel doing dot-product attention, to
separate what the gravity maths costs in registers from what the tiling costs).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from ban_jax.ops import gravity as G  # pylint: disable=g-import-not-at-top,wrong-import-position
from ban_jax.ops.gravity import pallas as GP  # pylint: disable=g-import-not-at-top,wrong-import-position

KERNELS = ("gravity_fwd", "gravity_bwd_dkdv", "gravity_bwd_dq", "gravity_bwd_fused")
_V1 = dict(block_q=128, block_k=64, num_warps=4, num_stages=3, block_q_dkv=64, block_k_dkv=128,
           block_q_dq=128, block_k_dq=64, bwd_num_warps=8, bwd_num_stages=2)
# (name, Options overrides of the v1 tiles, the ones timed on the H100 in pallas_notes.md).
# The "fwd" rows vary only the forward, the "bwd" rows only the backward.
CONFIGS = [
    ("v1: fwd 128x64 w4s3, dkdv 64x128 + dq 128x64 w8s2", dict()),
    ("defaults", None),
    ("fwd 128x64 w8s3", dict(num_warps=8)),
    ("fwd 64x64 w4s3", dict(block_q=64, block_k=64)),
    ("fwd 128x32 w8s3", dict(block_k=32, num_warps=8)),
    ("fwd 64x32 w4s3", dict(block_q=64, block_k=32)),
]
for _bq, _bk, _w, _s in [(32, 32, 4, 2), (16, 64, 4, 2), (32, 64, 4, 2), (64, 64, 4, 2),
                         (16, 64, 8, 2), (32, 64, 8, 2), (64, 64, 8, 2), (16, 128, 8, 2),
                         (32, 128, 8, 2), (32, 128, 4, 2), (32, 64, 8, 1), (32, 64, 8, 3)]:
  CONFIGS.append((f"bwd dkdv {_bq}x{_bk} dq {_bk}x{_bq} w{_w}s{_s}",
                  dict(block_q_dkv=_bq, block_k_dkv=_bk, block_q_dq=_bk, block_k_dq=_bq,
                       bwd_num_warps=_w, bwd_num_stages=_s)))
CONFIGS.append(("bwd dkdv 32x64 dq 128x32 w8s2", dict(block_q_dkv=32, block_k_dkv=64,
                                                      block_q_dq=128, block_k_dq=32)))
CONFIGS.append(("bwd dkdv 32x128 dq 128x64 w8s2 (H200 default)",
                dict(block_q_dkv=32, block_k_dkv=128, block_q_dq=128, block_k_dq=64)))
CONFIGS.append(("bwd dkdv 64x128 dq 128x64 w8s3", dict(bwd_num_stages=3)))
CONFIGS.append(("bwd dkdv 64x128 dq 128x64 w4s2", dict(bwd_num_warps=4)))
CONFIGS.append(("bwd dkdv 128x128 dq 128x64 w8s2", dict(block_q_dkv=128)))
# The fused backward (one kernel, dQ by atomics) on the dK/dV kernel's tiles.
for _bq, _bk, _w, _s in [(16, 64, 8, 2), (32, 64, 8, 2), (64, 64, 8, 2), (32, 128, 8, 2),
                         (64, 128, 8, 2), (32, 32, 4, 2), (32, 64, 4, 2), (16, 128, 8, 2)]:
  CONFIGS.append((f"fused bwd {_bq}x{_bk} w{_w}s{_s}",
                  dict(fused_backward=True, block_q_dkv=_bq, block_k_dkv=_bk,
                       bwd_num_warps=_w, bwd_num_stages=_s)))


def capture_ttir(options, score, shape, dtype=jnp.bfloat16):
  """Triton IR text of each kernel of one fwd+bwd call lowered for CUDA: {kernel: text}."""
  try:
    from jax._src.pallas.triton import pallas_call_registration as reg  # pylint: disable=g-import-not-at-top
    original = reg.lowering.lower_jaxpr_to_triton_module
  except (ImportError, AttributeError) as e:
    raise SystemExit(f"jax {jax.__version__}: the Pallas-Triton lowering is not where this script "
                     "looks for it (jax._src.pallas.triton.pallas_call_registration.lowering."
                     "lower_jaxpr_to_triton_module; written against jax 0.10.2). "
                     f"{type(e).__name__}: {e}") from None
  captured = []

  def spy(*args, **kwargs):
    res = original(*args, **kwargs)
    captured.append(res.module.operation.get_asm(enable_debug_info=False))
    return res
  reg.lowering.lower_jaxpr_to_triton_module = spy
  try:
    b, t, h, d = shape
    x = jax.ShapeDtypeStruct((b, t, h, d), dtype)
    mass = jnp.full((h,), 1.5, jnp.float32) if score == "gravity" else None

    def loss(q, k, v):
      out = G.gravity_attention(q, k, v, mass, causal=True, score=score,
                                implementation="pallas", pallas_options=options)
      return jnp.sum(out.astype(jnp.float32))
    jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, x, x).lower(
        lowering_platforms=("cuda",))
  finally:
    reg.lowering.lower_jaxpr_to_triton_module = original
  out = {}
  for text in captured:
    name = next(n for n in KERNELS if f"@{n}" in text)
    out[name] = text
  return out


def compile_and_count(ttir, num_warps, num_stages, arch):
  """Compiles Triton IR for `arch` (e.g. 90) and runs ptxas -v: a dict of counts."""
  import triton  # pylint: disable=g-import-not-at-top
  from triton.backends.compiler import GPUTarget  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "k.ttir")
    with open(src, "w") as f:
      f.write(ttir)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    ptx = kernel.asm["ptx"]
    ptx_path = os.path.join(tmp, "k.ptx")
    with open(ptx_path, "w") as f:
      f.write(ptx)
    res = subprocess.run([ptxas_path(), f"-arch=sm_{arch}a", "-v", ptx_path, "-o",
                          os.path.join(tmp, "k.cubin")], capture_output=True, text=True,
                         check=False)
  log = res.stdout + res.stderr
  if res.returncode != 0:
    raise RuntimeError(f"ptxas failed:\n{log[-2000:]}")

  def grab(pattern):
    m = re.search(pattern, log)
    return int(m.group(1)) if m else None
  return dict(
      registers=grab(r"Used (\d+) registers"),
      spill_stores=grab(r"(\d+) bytes spill stores"),
      spill_loads=grab(r"(\d+) bytes spill loads"),
      stack_frame=grab(r"(\d+) bytes stack frame"),
      shared_bytes=int(kernel.metadata.shared),
      wgmma=len(re.findall(r"wgmma\.mma_async", ptx)),
      atomics=len(re.findall(r"\b(?:red|atom)\.global", ptx)),
      mma_sync=len(re.findall(r"\bmma\.sync", ptx)),
      num_warps=num_warps, num_stages=num_stages)


def ptxas_path():
  """The newest ptxas the `triton` package ships (it must read the PTX version it emits)."""
  import triton  # pylint: disable=g-import-not-at-top
  bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
  for name in ("ptxas-blackwell", "ptxas"):
    path = os.path.join(bin_dir, name)
    if os.path.exists(path):
      return path
  raise SystemExit(f"no ptxas under {bin_dir}; reinstall the triton package.")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=None, help="JSON file for the results")
  parser.add_argument("--scores", default="gravity,dot")
  parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90")
  parser.add_argument("--shape", default="8,4096,16,128", help="batch,length,heads,head_dim")
  parser.add_argument("--only", default="", help="run configs whose name contains this")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  args = parser.parse_args()
  try:
    import triton  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SystemExit("this script needs the `triton` package (its compiler and ptxas): "
                     "pip install triton") from None
  shape = tuple(int(x) for x in args.shape.split(","))
  dtype = jnp.dtype(args.dtype)
  base = GP.default_options(backend="triton", dtype=dtype, head_dim=shape[3], interpret=False)
  rec = dict(jax=jax.__version__, triton=triton.__version__, ptxas=os.path.basename(
      ptxas_path()), arch=f"sm_{args.arch}a", shape=dict(zip("bthd", shape)), dtype=args.dtype,
             causal=True, results=[])
  t0 = time.time()
  for name, overrides in CONFIGS:
    if args.only and args.only not in name:
      continue
    opt = base if overrides is None else base._replace(**{**_V1, **overrides})
    for score in args.scores.split(","):
      ttir = capture_ttir(opt, score, shape, dtype)
      for kernel in [k for k in KERNELS if k in ttir]:
        warps = opt.num_warps if kernel == "gravity_fwd" else opt.bwd_num_warps
        stages = opt.num_stages if kernel == "gravity_fwd" else opt.bwd_num_stages
        try:
          counts = compile_and_count(ttir[kernel], warps, stages, args.arch)
        except Exception as e:  # pylint: disable=broad-except
          counts = dict(error=f"{type(e).__name__}: {str(e)[:500]}")
        tiles = dict(gravity_fwd=(opt.block_q, opt.block_k),
                     gravity_bwd_dkdv=(opt.block_q_dkv, opt.block_k_dkv),
                     gravity_bwd_dq=(opt.block_q_dq, opt.block_k_dq),
                     gravity_bwd_fused=(opt.block_q_dkv, opt.block_k_dkv))[kernel]
        row = dict(config=name, score=score, kernel=kernel, tiles=list(tiles), **counts)
        rec["results"].append(row)
        print(f"[{time.time() - t0:5.0f}s] {name} | {score} | {kernel}: " + (
            counts.get("error") or
            f"{counts['registers']} regs, spills {counts['spill_stores']}/"
            f"{counts['spill_loads']} B, smem {counts['shared_bytes'] // 1024} KiB, "
            f"wgmma {counts['wgmma']}, mma.sync {counts['mma_sync']}"), flush=True)
      if args.out:
        with open(args.out + ".tmp", "w") as f:
          json.dump(rec, f, indent=1)
        os.replace(args.out + ".tmp", args.out)

  print("\n| config | score | kernel | tiles | warps/stages | regs | spill st/ld (B) | "
        "smem KiB | wgmma |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rec["results"]:
    if "error" in r:
      print(f"| {r['config']} | {r['score']} | {r['kernel']} | {r['tiles']} | | error | | | |")
      continue
    print(f"| {r['config']} | {r['score']} | {r['kernel'][8:]} | {r['tiles'][0]}x{r['tiles'][1]}"
          f" | {r['num_warps']}/{r['num_stages']} | {r['registers']} | {r['spill_stores']}/"
          f"{r['spill_loads']} | {r['shared_bytes'] // 1024} | {r['wgmma']} |")


if __name__ == "__main__":
  main()
