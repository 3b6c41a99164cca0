"""One constrained-hardware measurement in its own process (NumPy and the runtime only).

    python bench/constrained_child.py MODEL.banx BRANCHES PROMPT_LEN STEPS SLOTS [CPU]

Pins itself to one core (`os.sched_setaffinity`; the launcher also sets the BLAS thread counts
to 1), loads the model (`BRANCHES`: the BAN's branch kernels "mapped" or "loaded"), prefills a
PROMPT_LEN-token prompt and decodes STEPS greedy tokens through a `recent` cache of SLOTS slots,
and prints one JSON line: tokens/s of the decode steps, and the OS's memory figures
(/proc/self/status: VmHWM, the peak resident set; RssAnon and RssFile, private and file-backed
resident memory) after loading, after the prefill and at the end. `MODEL` "none" measures the
interpreter with NumPy imported and nothing loaded (the floor under every figure).
"""

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ban_jax.runtime import cache as cache_lib  # pylint: disable=wrong-import-position
from ban_jax.runtime import model as model_lib  # pylint: disable=wrong-import-position


def memory() -> dict[str, int]:
  """{VmHWM, VmRSS, RssAnon, RssFile} in bytes, from /proc/self/status."""
  out = {}
  with open("/proc/self/status") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
        out[key] = int(value.split()[0]) * 1024
  return out


def main(argv):
  path, branches, prompt_len, steps, slots = argv[:5]
  prompt_len, steps, slots = int(prompt_len), int(steps), int(slots)
  cpus = sorted(os.sched_getaffinity(0))
  cpu = int(argv[5]) if len(argv) > 5 else cpus[-1]
  os.sched_setaffinity(0, {cpu})
  result = {"cpu": cpu, "model": path, "branches": branches}
  if path == "none":
    result["memory_end"] = memory()
    print(json.dumps(result))
    return
  start = time.perf_counter()
  model = model_lib.load(path, branches=branches)
  result["load_s"] = time.perf_counter() - start
  result["memory_loaded"] = memory()
  session = model.session(cache_lib.Spec("recent", slots=slots))
  prompt = np.random.default_rng(0).integers(3, model.vocab_size, prompt_len)
  prompt[0] = 1
  start = time.perf_counter()
  last = session.prefill(prompt)[-1]
  result["prefill_tokens_per_s"] = prompt_len / (time.perf_counter() - start)
  result["memory_prefilled"] = memory()
  start = time.perf_counter()
  for _ in range(steps):
    last = session.step(int(np.argmax(last)))
  result["decode_tokens_per_s"] = steps / (time.perf_counter() - start)
  result["memory_end"] = memory()
  print(json.dumps(result))


if __name__ == "__main__":
  main(sys.argv[1:])
