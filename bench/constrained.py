r"""Hardware is not an assumption: the NumPy runtime's file sizes, memory and speed on one core.

    nice python bench/constrained.py            # ~35 min on a shared 2-core machine
    python bench/constrained.py --parts=speed,offload   # the timings alone, ~5 min
    python bench/constrained.py --report_only   # the plot and the results section again

Three parts, one JSON (`bench/results/constrained.json`), one PNG, one docs/results.md section:

1. **Quality.** The trained full system and transformer of the KV-cache study (`bench/results/
   kv_cache/{full,transformer}`, ~100k parameters each) exported as float32, float16, int8 per
   output channel and int8 per group of 32 inputs; validation bits/byte of each through the
   runtime on the whole bundled validation split (windows of the training length, documents
   kept apart as in training's evaluation), and JAX's own figure for the run as the check.
2. **Size, memory, speed.** The default system (BAN: inverse-square gravity attention, tagging,
   power law) and the transformer preset at equal parameters (~4.8M), with random weights (size,
   memory and speed do not depend on training), and the trained pair; per dtype: file size, peak
   resident memory of a separate process (the OS's VmHWM) and its tokens/s pinned to one core.
3. **Branch offload.** The default BAN with 4, 16 and 64 branches, the branch kernels
   memory-mapped from the file or loaded into private memory: peak resident memory (file-backed
   and private apart) and tokens/s per point.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import cli_runs  # pylint: disable=g-import-not-at-top,wrong-import-position

cli_runs.define_study_flags("constrained", seeds=False)
_STEPS = flags.DEFINE_integer("steps", 48, "Greedy decode steps timed per process.")
_PROMPT = flags.DEFINE_integer("prompt_len", 64, "Prompt tokens prefilled per process.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Processes per point (the fastest is kept).")
_BRANCHES = flags.DEFINE_list("branches", ["4", "16", "64"], "Branch counts of the offload "
                              "study.")
_PARTS = flags.DEFINE_list("parts", ["quality", "speed", "offload", "gate"], "What to measure.")
_GATE_WINDOWS = flags.DEFINE_integer("gate_windows", 400, "Validation windows of the gate "
                                     "study (whole batches of 64).")
FLAGS = flags.FLAGS

REPO = cli_runs.REPO
TRAINED = {"ban": os.path.join(REPO, "bench", "results", "kv_cache", "full"),
           "transformer": os.path.join(REPO, "bench", "results", "kv_cache", "transformer")}
PRESETS = {"ban": "default", "transformer": "transformer"}
DTYPES = (("float32", 0), ("float16", 0), ("int8", 0), ("int8", 32))
CHILD = os.path.join(REPO, "bench", "constrained_child.py")
MB = 2 ** 20


def _label(dtype, group):
  return f"int8/g{group}" if group else dtype


def random_params(model, seed=0):
  """Random weights in the model's tree (matrices ~ N(0, 1/fan_in)); shapes via eval_shape."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    std = (1.0 if name.endswith("embedding") else leaf.shape[0] ** -0.5) if leaf.ndim > 1 else 0.3
    return (std * rng.standard_normal(leaf.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes["params"])


def write(path, config, model, params, dtype, group, step=0):
  from ban_jax.inference import banx_export as export  # pylint: disable=g-import-not-at-top
  from ban_jax.data import tokenizer  # pylint: disable=g-import-not-at-top
  from ban_jax.runtime import banx  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    banx.write(path, export.header(config, model.config, tokenizer.ByteTokenizer(), step=step,
                                   dtype=dtype, group=group),
               export.encode(params, dtype, group))
  return path


def default_size(kind, **model_overrides):
  """(config, model, random params) of the preset at its default size, float32 activations."""
  from configs import wiki  # pylint: disable=g-import-not-at-top
  from ban_jax import models  # pylint: disable=g-import-not-at-top
  c = wiki.get_config(PRESETS[kind])
  c.model.dtype = "float32"
  c.model.update(model_overrides)
  model = models.get_model(c.model, 259)
  return c, model, random_params(model)


def child(path, branches="mapped"):
  """The fastest of --repeats single-core processes; memory figures from the same process."""
  env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
             PYTHONPATH=REPO)
  best = None
  for _ in range(_REPEATS.value):
    out = subprocess.run([sys.executable, CHILD, path, branches, str(_PROMPT.value),
                          str(_STEPS.value), "512"], capture_output=True, text=True, env=env,
                         check=False)
    if out.returncode:
      raise RuntimeError(f"{path}: {out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if best is None or r.get("decode_tokens_per_s", 0) > best.get("decode_tokens_per_s", 0):
      peak = max(r["memory_end"]["VmHWM"], best["peak_rss"] if best else 0)
      best = dict(r, peak_rss=peak)
  return best


def _param_count(path):
  from ban_jax.runtime import banx  # pylint: disable=g-import-not-at-top
  return int(sum(np.prod(e["shape"]) for e in banx.read_header(path)["tensors"].values()))


def val_bpb(path, windows):
  """Validation bits/byte through the runtime: each window's documents apart, full cache."""
  from ban_jax.runtime import cache as cache_lib  # pylint: disable=g-import-not-at-top
  from ban_jax.runtime import model as model_lib  # pylint: disable=g-import-not-at-top
  model = model_lib.load(path)
  nats = nbytes = 0.0
  for w in windows:
    seg = w["segment_ids"]
    for s in np.unique(seg[seg > 0]):
      idx = np.nonzero(seg == s)[0]
      caches = model.empty_caches(cache_lib.Spec("full", slots=len(idx)))
      logits = model.forward(w["inputs"][idx], w["positions"][idx].astype(np.int32), caches,
                             cache_lib.Spec("full", slots=len(idx)))
      log_p = logits - logits.max(-1, keepdims=True)
      log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
      targets = w["targets"][idx]
      weight = w["weights"][idx]
      nats += float(np.sum(-log_p[np.arange(len(idx)), targets] * weight))
      nbytes += float(np.sum(weight * (targets >= 3)))
  return nats / np.log(2) / nbytes


def jax_bpb(run, split):
  """The run's validation bits/byte through JAX's own evaluation (the check on float32)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ban_jax.training import evaluate  # pylint: disable=g-import-not-at-top
  from ban_jax.training import setup  # pylint: disable=g-import-not-at-top
  from ban_jax.training import steps  # pylint: disable=g-import-not-at-top
  token_bytes = jnp.asarray(run.tokenizer.token_bytes, jnp.float32)
  fn = jax.jit(lambda p, b: steps.eval_step(p, b, model=run.model, token_bytes=token_bytes))
  mesh = setup.make_mesh(run.config)
  with mesh:
    return evaluate.evaluate(fn, run.params, split, 64, 0,
                             setup.mesh_lib.batch_sharding(mesh))["bits_per_byte"]


def quality(results, save):
  from ban_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  from ban_jax.training import setup  # pylint: disable=g-import-not-at-top
  done = {(r["model"], r["dtype"]) for r in results.setdefault("quality", [])}
  for kind, folder in TRAINED.items():
    run = trained.load(folder)
    split = setup.build_data(run.config).validation
    windows = [row for b in pipeline.eval_batches(split, 64) for row in
               ({k: v[i] for k, v in b.items()} for i in range(len(b["inputs"])))
               if row["weights"].sum() > 0]
    if not any(r["model"] == kind and "jax_val_bpb" in r for r in results["quality"]):
      results["quality"].append({"model": kind, "dtype": "jax", "jax_val_bpb": jax_bpb(run, split)})
    for dtype, group in DTYPES:
      label = _label(dtype, group)
      if (kind, label) in done:
        continue
      path = write(os.path.join(FLAGS.workdir, f"trained_{kind}_{label.replace('/', '_')}.banx"),
                   run.config, run.model, run.params, dtype, group, run.step)
      start = time.time()
      bpb = val_bpb(path, windows)
      results["quality"].append({
          "model": kind, "dtype": label, "val_bpb": bpb, "file_bytes": os.path.getsize(path),
          "params": _param_count(path), "windows": len(windows), "seconds": time.time() - start})
      print(f"quality {kind} {label}: {bpb:.4f} bits/byte", flush=True)
      save()


def speed(results, save):
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  done = {(r["model"], r["size"], r["dtype"]) for r in results.setdefault("speed", [])}
  if "baseline" not in results:
    results["baseline"] = child("none")
  for size in ("default", "trained"):
    for kind in ("ban", "transformer"):
      made = None
      for dtype, group in DTYPES:
        label = _label(dtype, group)
        if (kind, size, label) in done:
          continue
        if made is None:
          if size == "trained":
            run = trained.load(TRAINED[kind])
            made = (run.config, run.model, run.params)
          else:
            made = default_size(kind)
        path = write(os.path.join(FLAGS.workdir, f"{size}_{kind}_{label.replace('/', '_')}.banx"),
                     *made, dtype, group)
        r = child(path)
        results["speed"].append({
            "model": kind, "size": size, "dtype": label, "file_bytes": os.path.getsize(path),
            "params": _param_count(path), "peak_rss": r["peak_rss"],
            "rss_anon_end": r["memory_end"]["RssAnon"], "rss_file_end": r["memory_end"]["RssFile"],
            "decode_tokens_per_s": r["decode_tokens_per_s"],
            "prefill_tokens_per_s": r["prefill_tokens_per_s"]})
        print(f"speed {size} {kind} {label}: {r['decode_tokens_per_s']:.1f} tokens/s, peak "
              f"{r['peak_rss'] / MB:.1f} MiB", flush=True)
        save()


def offload(results, save):
  from ban_jax.runtime import banx  # pylint: disable=g-import-not-at-top
  done = {(r["branches"], r["mode"]) for r in results.setdefault("offload", [])}
  for n in (int(b) for b in _BRANCHES.value):
    path = os.path.join(FLAGS.workdir, f"offload_ban_n{n}.banx")
    if not os.path.exists(path):
      write(path, *default_size("ban", num_branches=n), "float32", 0)
    tensors = banx.read_header(path)["tensors"]
    branch_bytes = sum(4 * int(np.prod(e["shape"])) for name, e in tensors.items()
                       if name.endswith("branches/kernel"))
    for mode in ("mapped", "loaded"):
      if (n, mode) in done:
        continue
      r = child(path, mode)
      results["offload"].append({
          "branches": n, "mode": mode, "file_bytes": os.path.getsize(path),
          "branch_kernel_bytes": branch_bytes, "peak_rss": r["peak_rss"],
          "rss_anon_end": r["memory_end"]["RssAnon"], "rss_file_end": r["memory_end"]["RssFile"],
          "rss_file_loaded": r["memory_loaded"]["RssFile"],
          "decode_tokens_per_s": r["decode_tokens_per_s"]})
      print(f"offload n={n} {mode}: peak {r['peak_rss'] / MB:.1f} MiB, file-backed "
            f"{r['memory_end']['RssFile'] / MB:.1f} MiB, {r['decode_tokens_per_s']:.1f} tokens/s",
            flush=True)
      save()


def gate(results, save):
  """How often a token could skip reading the peripheral branch kernels, exactly.

  The focus needs the salience s_n = x·(W_n v) + c_n·v + bias_n (W_n v precomputed: [N, D]) and
  the focus kernel; the peripheral message m = (Σ_{n≠f} π_n tanh(b_n)) U has
  ‖m‖ ≤ ‖U‖₂ Σ_{n≠f} π_n min(√d, ‖W_n‖₂‖x‖ + ‖c_n‖). When that bound is at most
  threshold·‖h‖ the gate is closed whatever the peripheral branches hold, so a runtime could
  skip reading them for that token. Counted per layer on the trained BAN's validation windows.
  """
  if "gate" in results:
    return
  from ban_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  from ban_jax.runtime import cache as cache_lib  # pylint: disable=g-import-not-at-top
  from ban_jax.runtime import layers  # pylint: disable=g-import-not-at-top
  from ban_jax.runtime import model as model_lib  # pylint: disable=g-import-not-at-top
  from ban_jax.training import setup  # pylint: disable=g-import-not-at-top
  run = trained.load(TRAINED["ban"])
  path = write(os.path.join(FLAGS.workdir, "trained_ban_float32.banx"), run.config, run.model,
               run.params, "float32", 0, run.step)
  model = model_lib.load(path)
  seen = []
  original = layers.branched_attractor
  layers.branched_attractor = lambda x, w, cfg: (seen.append((x, w)), original(x, w, cfg))[1]
  try:
    split = setup.build_data(run.config).validation
    for b in pipeline.eval_batches(split, 64, max(_GATE_WINDOWS.value // 64, 1)):
      for i in range(len(b["inputs"])):
        n = len(b["inputs"][i])
        spec = cache_lib.Spec("full", slots=n)
        model.forward(b["inputs"][i], b["positions"][i].astype(np.int32),
                      model.empty_caches(spec), spec)
  finally:
    layers.branched_attractor = original
  cfg = model.config["attractor"]
  depth = model.config["depth"]
  per_layer = [{"positions": 0, "open": 0, "certified_closed": 0,
                "windows": len(seen) // depth} for _ in range(depth)]
  for k, (x, w) in enumerate(seen):
    kernel, bias = w("branches/kernel"), w("branches/bias")
    sigma = np.linalg.norm(kernel, ord=2, axis=(1, 2))                      # [N]
    u_norm = np.linalg.norm(w("gate/proj/kernel"), ord=2)
    branches = np.matmul(x[None], kernel).transpose(1, 0, 2) + bias
    scores = branches @ w("salience/vector") + w("salience/bias")
    focus = np.argmax(scores, -1)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    rows = np.arange(len(x))
    h_norm = np.linalg.norm(branches[rows, focus], axis=-1)
    reach = np.minimum(np.sqrt(kernel.shape[-1]),
                       np.linalg.norm(x, axis=-1)[:, None] * sigma + np.linalg.norm(bias, axis=-1))
    others = probs.copy()
    others[rows, focus] = 0
    bound = u_norm * np.sum(others * reach, axis=-1)
    message = np.matmul(others[:, None], np.tanh(branches))[:, 0] @ w("gate/proj/kernel")
    is_open = np.linalg.norm(message, axis=-1) > cfg["threshold"] * h_norm
    stats = per_layer[k % depth]
    stats["positions"] += len(x)
    stats["open"] += int(is_open.sum())
    stats["certified_closed"] += int((bound <= cfg["threshold"] * h_norm).sum())
  results["gate"] = per_layer
  print(f"gate: {per_layer}", flush=True)
  save()


def main(argv):
  del argv
  results = cli_runs.load_json(FLAGS.out)
  results.pop("runs", None)
  if not FLAGS.report_only:
    os.makedirs(FLAGS.workdir, exist_ok=True)
    timed = bool({"speed", "offload"} & set(_PARTS.value))
    if timed:  # the conditions the timings were taken under
      results["machine"] = {"cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(),
                            "numpy": np.__version__, "steps": _STEPS.value,
                            "prompt_len": _PROMPT.value, "repeats": _REPEATS.value}
    save = lambda: cli_runs.save_json(FLAGS.out, results)
    for part in (quality, speed, offload, gate):
      if part.__name__ in _PARTS.value:
        part(results, save)
    if timed:
      results["machine"]["load_average_end"] = os.getloadavg()
    save()
  from bench import constrained_report  # pylint: disable=g-import-not-at-top
  png = os.path.splitext(FLAGS.out)[0] + ".png"
  constrained_report.plot(results, png)
  cli_runs.publish("constrained", constrained_report.lines(results), png)


if __name__ == "__main__":
  app.run(main)
