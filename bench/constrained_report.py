"""The constrained-hardware study's plot and docs/results.md section (from constrained.json)."""

MB = 2 ** 20
DTYPE_ORDER = ("float32", "float16", "int8", "int8/g32")


def _mb(x):
  return f"{x / MB:.1f}"


def _by(rows, **match):
  return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def flat_verdict(offload) -> dict:
  """How peak resident memory grew from the fewest to the most branches, per mode."""
  out = {}
  for mode in ("mapped", "loaded"):
    rows = sorted(_by(offload, mode=mode), key=lambda r: r["branches"])
    if len(rows) < 2:
      continue
    lo, hi = rows[0], rows[-1]
    grew = hi["peak_rss"] - lo["peak_rss"]
    weights = hi["branch_kernel_bytes"] - lo["branch_kernel_bytes"]
    out[mode] = {"from": lo["branches"], "to": hi["branches"], "grew": grew,
                 "branch_bytes_grew": weights, "flat": grew < 0.1 * weights}
  return out


def lines(results) -> list[str]:
  m = results.get("machine", {})
  out = ["## Running on a small device: the NumPy runtime's size, memory and speed", "",
         "Written by `python bench/constrained.py --report_only` from "
         "`bench/results/constrained.json`. Measured on this 2-core machine, shared with other "
         f"work (load average {m.get('load_average_start', ['?'])[0]:.1f} at the start, "
         + (f"{m['load_average_end'][0]:.1f}" if "load_average_end" in m else "?") +
         " at the end), each point its own process pinned to one core (`os.sched_setaffinity`, BLAS "
         f"threads 1), NumPy {m.get('numpy', '?')}: the fastest of {m.get('repeats', '?')} "
         "processes, so tokens/s are what one busy core gave, not a device's figure. Peak "
         "resident memory is the kernel's VmHWM of that process; it counts file pages of the "
         "memory-mapped model once they are touched, and the interpreter itself.", ""]
  quality = results.get("quality", [])
  if quality:
    out += ["### What int8 costs (trained models, whole bundled validation split)", "",
            "| model | parameters | weights | file | val bits/byte | vs float32 |",
            "|---|---|---|---|---|---|"]
    for kind in ("ban", "transformer"):
      base = _by(quality, model=kind, dtype="float32")
      for dtype in DTYPE_ORDER:
        for r in _by(quality, model=kind, dtype=dtype):
          cost = "" if not base else f"{r['val_bpb'] - base[0]['val_bpb']:+.4f}"
          out.append(f"| {kind} | {r['params']:,} | {dtype} | {r['file_bytes'] / 1024:.0f} KiB "
                     f"| {r['val_bpb']:.4f} | {cost} |")
    checks = []
    for kind in ("ban", "transformer"):
      j, f = _by(quality, model=kind, dtype="jax"), _by(quality, model=kind, dtype="float32")
      if j and f:
        checks.append(f"{kind} {j[0]['jax_val_bpb']:.6f} (runtime float32 "
                      f"{f[0]['val_bpb'] - j[0]['jax_val_bpb']:+.1e})")
    if checks:
      out += ["", "JAX's own evaluation of the same runs on the same split: " +
              "; ".join(checks) + "."]
    out.append("")
  speed = results.get("speed", [])
  if speed:
    base = results.get("baseline", {}).get("memory_end", {})
    out += ["### File size, peak memory and tokens/s on one core", "",
            "Decoding greedily after a {}-token prompt, {} steps timed, `recent` cache of 512 "
            "slots (the training window). `default` = the default system (BAN, inverse-square "
            "gravity attention, tagging, power law) and the transformer preset at equal "
            "parameters, with random weights (size, memory and speed do not depend on "
            "training); `trained` = the trained pair above.".format(
                m.get("prompt_len", "?"), m.get("steps", "?")), "",
            "| size | model | parameters | weights | file MiB | peak RSS MiB | private MiB | "
            "file-backed MiB | decode tokens/s | prefill tokens/s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for size in ("default", "trained"):
      for kind in ("ban", "transformer"):
        for dtype in DTYPE_ORDER:
          for r in _by(speed, model=kind, size=size, dtype=dtype):
            out.append(f"| {size} | {kind} | {r['params']:,} | {dtype} | {_mb(r['file_bytes'])} "
                       f"| {_mb(r['peak_rss'])} | {_mb(r['rss_anon_end'])} | "
                       f"{_mb(r['rss_file_end'])} | {r['decode_tokens_per_s']:.1f} | "
                       f"{r['prefill_tokens_per_s']:.0f} |")
    if base:
      out += ["", f"The interpreter with NumPy imported and no model: {_mb(base['VmHWM'])} MiB "
              f"peak ({_mb(base['RssAnon'])} private, {_mb(base['RssFile'])} file-backed: "
              "shared libraries)."]
    out.append("")
  offload = results.get("offload", [])
  if offload:
    out += ["### Branch offload: the paper's memory table, measured", "",
            "The default BAN (float32) with N branches per layer; the branch kernels "
            "([N, 256, 256] per layer) memory-mapped from the file, or copied into private "
            "memory at load. File-backed and private resident memory at the end of decoding.",
            "", "| branches | branch kernels MiB | mode | peak RSS MiB | file-backed MiB | "
            "private MiB | decode tokens/s |", "|---|---|---|---|---|---|---|"]
    for r in sorted(offload, key=lambda r: (r["branches"], r["mode"])):
      out.append(f"| {r['branches']} | {_mb(r['branch_kernel_bytes'])} | {r['mode']} | "
                 f"{_mb(r['peak_rss'])} | {_mb(r['rss_file_end'])} | {_mb(r['rss_anon_end'])} | "
                 f"{r['decode_tokens_per_s']:.1f} |")
    verdict = flat_verdict(offload)
    for mode, v in verdict.items():
      out.append("")
      out.append(f"- {mode}: peak resident memory grew by {_mb(v['grew'])} MiB from {v['from']} "
                 f"to {v['to']} branches, against {_mb(v['branch_bytes_grew'])} MiB more branch "
                 f"kernels: **{'flat' if v['flat'] else 'not flat'} in the branch count**.")
    out += ["", "**What is resident per token, and why.** Every token computes every branch's "
            "drive b_n = x W_n + c_n: the salience scores that pick the focus need all N, and "
            "the peripheral message needs tanh(b_n) of every branch but the focus. So every "
            "token reads every branch kernel; memory-mapping them only moves them from private "
            "memory to the page cache, where they are touched again at the next token and stay "
            "resident (file-backed). A kernel could evict them, but then each token would read "
            "them from storage again. The KV cache, the other per-token state, is the same as "
            "the transformer's. The paper's claim that only the focus branch lives in RAM does "
            "not hold for this architecture (docs/design.md §9)."]
  gate = results.get("gate")
  if gate:
    out += ["", "**Could a token skip the peripheral kernels?** The focus needs only the salience "
            "x·(W_n v) + c_n·v + bias_n (an [N, D] matrix, precomputable) and its own kernel; the "
            "peripheral message is bounded by ‖U‖₂ Σ_{n≠f} π_n min(√d, ‖W_n‖₂‖x‖ + ‖c_n‖), and "
            "where that bound is below threshold·‖h‖ the gate is closed whatever the peripheral "
            f"branches hold. On {gate[0].get('windows', '?')} of the trained full system's "
            "validation windows (whole batches spread over the split):", "",
            "| layer | positions | gate open | provably closed without reading the periphery |",
            "|---|---|---|---|"]
    for i, g in enumerate(gate):
      out.append(f"| {i} | {g['positions']:,} | {g['open'] / g['positions']:.1%} | "
                 f"{g['certified_closed'] / g['positions']:.1%} |")
    out += ["", "A runtime built on this bound (not written) would read the peripheral kernels "
            "for the remaining tokens only: fewer bytes per token on average, but any run of a "
            "few tokens still touches every kernel, so resident memory would not be flat either "
            "unless the OS evicted the pages between uses (paying a read from storage each "
            "time)."]
  return out


def plot(results, png):
  """Four panels: file size, peak memory, tokens/s (default size), and the offload points."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 4, figsize=(18, 4))
  speed = [r for r in results.get("speed", []) if r["size"] == "default"]
  for i, (key, title) in enumerate((("file_bytes", "file MiB"), ("peak_rss", "peak RSS MiB"),
                                    ("decode_tokens_per_s", "decode tokens/s, one core"))):
    ax = axes[i]
    for j, kind in enumerate(("ban", "transformer")):
      rows = {r["dtype"]: r for r in speed if r["model"] == kind}
      xs = [k + 0.4 * j for k in range(len(DTYPE_ORDER))]
      ys = [rows[d][key] / (MB if key != "decode_tokens_per_s" else 1) if d in rows else 0
            for d in DTYPE_ORDER]
      ax.bar(xs, ys, width=0.4, label=kind)
    ax.set_xticks([k + 0.2 for k in range(len(DTYPE_ORDER))], DTYPE_ORDER)
    ax.set_title(f"default size: {title}")
    ax.legend()
  ax = axes[3]
  for mode, style in (("loaded", "o-"), ("mapped", "s:")):
    rows = sorted(_by(results.get("offload", []), mode=mode), key=lambda r: r["branches"])
    ax.plot([r["branches"] for r in rows], [r["peak_rss"] / MB for r in rows], style,
            label=f"{mode}: peak RSS", markersize=9 if mode == "loaded" else 5)
    ax.plot([r["branches"] for r in rows], [r["rss_file_end"] / MB for r in rows], style,
            alpha=0.4, label=f"{mode}: file-backed")
  rows = sorted(_by(results.get("offload", []), mode="mapped"), key=lambda r: r["branches"])
  ax.plot([r["branches"] for r in rows], [r["branch_kernel_bytes"] / MB for r in rows], "k--",
          label="branch kernels")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("branches per layer")
  ax.set_ylabel("MiB")
  ax.set_title("branch offload (default BAN, float32)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(png, dpi=110)
  plt.close(fig)
