r"""Generates text from a trained run: `python -m ban_jax.generate --workdir=runs/smoke --prompt=...`.

Loads the run's newest checkpoint and config, compiles one prefill and one decoding step, and
streams the text to stdout as it is produced. The key/value cache has a fixed number of slots
(`--kv_budget`); when it is full, `--kv_policy` decides which token to evict, so generation can
run past the training window in bounded memory:

    python -m ban_jax.generate --workdir=runs/smoke --prompt="The history of " --length=500 \
        --kv_policy=gravity --kv_budget=64
    echo "Once upon" | python -m ban_jax.generate --workdir=runs/smoke --prompt=-

Policies: full (no eviction; the cache holds the whole text), recent, sinks (StreamingLLM), h2o,
tova, knorm, gravity (the paper's level one: tagging mass x surprisal x attention received).
"""

import sys

from absl import app
from absl import flags

from ban_jax import errors
from ban_jax.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run's folder (runs/<preset>).")
_PROMPT = flags.DEFINE_string("prompt", None, "Text to continue; '-' reads stdin.")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "Read the prompt from this file.")
_LENGTH = flags.DEFINE_integer("length", 200, "Tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Sampling temperature; 0 is greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: the smallest set with this mass.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_POLICY = flags.DEFINE_string("kv_policy", "full", "Cache eviction policy: full, recent, sinks, "
                              "h2o, tova, knorm or gravity.")
_BUDGET = flags.DEFINE_integer("kv_budget", 0, "Cache slots per layer (0: the whole text for "
                               "full, the training window otherwise).")
_RECENT = flags.DEFINE_integer("kv_recent", -1, "h2o/gravity: newest tokens always kept "
                               "(-1: half the budget).")
_TERMS = flags.DEFINE_list("kv_terms", ["tag", "surprisal", "attention"],
                           "gravity: the terms of a token's mass.")


def _prompt() -> str:
  if _PROMPT_FILE.value is not None:
    try:
      with open(_PROMPT_FILE.value, encoding="utf-8") as f:
        text = f.read()
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(f"--prompt_file={_PROMPT_FILE.value} cannot be read as UTF-8 text "
                      f"({e}).") from e
  elif _PROMPT.value == "-" or (_PROMPT.value is None and not sys.stdin.isatty()):
    text = sys.stdin.read()
  else:
    text = _PROMPT.value or ""
  if not text:
    raise UserError("the prompt is empty; pass --prompt=TEXT, --prompt_file=FILE or text on "
                    "stdin with --prompt=-.")
  return text


def run() -> None:
  """Everything after flag parsing; raises UserError for bad input."""
  if not _WORKDIR.value:
    raise UserError("--workdir is required: the folder of a trained run (runs/<preset>).")
  if _LENGTH.value < 1:
    raise UserError(f"--length={_LENGTH.value} must be at least 1.")
  if _TEMPERATURE.value < 0 or not 0 < _TOP_P.value <= 1 or _TOP_K.value < 0:
    raise UserError("--temperature must be >= 0, --top_p in (0, 1] and --top_k >= 0.")
  prompt = _prompt()
  # Imported here so that flag errors answer without loading JAX.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ban_jax.inference import generate  # pylint: disable=g-import-not-at-top
  from ban_jax.inference import trained  # pylint: disable=g-import-not-at-top
  from ban_jax.ops import kv_cache  # pylint: disable=g-import-not-at-top
  if _POLICY.value not in kv_cache.POLICIES:
    raise UserError(f"--kv_policy={_POLICY.value} is unknown; use one of {kv_cache.POLICIES}.")

  trained_run = trained.load(_WORKDIR.value)
  tokenizer = trained_run.tokenizer
  ids = np.concatenate([[tokenizer.bos_id], tokenizer.encode(prompt)]).astype(np.int32)
  train_len = trained_run.config.data.seq_len
  budget = _BUDGET.value or (len(ids) + _LENGTH.value if _POLICY.value == "full" else train_len)
  try:
    spec = kv_cache.KVSpec(_POLICY.value, slots=budget,
                           recent=None if _RECENT.value < 0 else _RECENT.value,
                           terms=tuple(_TERMS.value))
  except ValueError as e:
    raise UserError(f"{e} (--kv_policy, --kv_budget, --kv_recent, --kv_terms)") from e

  out = sys.stdout.buffer
  out.write(prompt.encode("utf-8"))
  out.flush()

  def emit(token):
    if token not in (tokenizer.bos_id, tokenizer.eos_id):
      out.write(tokenizer.to_bytes([token]))
      out.flush()

  try:
    generate.generate(trained_run.model, trained_run.params, ids, length=_LENGTH.value,
                      spec=spec, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                      top_p=_TOP_P.value, rng=jax.random.PRNGKey(_SEED.value),
                      train_len=train_len, on_token=emit)
  except ValueError as e:
    raise UserError(str(e)) from e
  out.write(b"\n")
  out.flush()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  errors.run_reporting(run)


if __name__ == "__main__":
  app.run(main)
