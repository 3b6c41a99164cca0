"""Streams text from a `.banx` model with NumPy only.

    python -m ban_jax.runtime --model=model.banx --prompt="The history of " --length=200 \
        --kv_policy=gravity --kv_budget=64
    echo "Once upon" | python -m ban_jax.runtime --model=model.banx --prompt=-

On a device, with this folder copied as `runtime/` beside the model: `python -m runtime ...`.
Bad input is one `error:` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import banx
from . import cache as cache_lib
from . import model as model_lib
from . import sampling
from . import tokenizer as tokenizer_lib


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    _fail(f"{message} (see --help)")


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m ban_jax.runtime", description=__doc__.split("\n")[0])
  p.add_argument("--model", required=True, help="The .banx file (python -m ban_jax.export).")
  p.add_argument("--prompt", default=None, help="Text to continue; '-' reads stdin.")
  p.add_argument("--prompt_file", default=None, help="Read the prompt from this file.")
  p.add_argument("--length", type=int, default=200, help="Tokens to generate.")
  p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy.")
  p.add_argument("--top_k", type=int, default=0, help="Sample among the k most likely (0: all).")
  p.add_argument("--top_p", type=float, default=1.0, help="Nucleus: the smallest set with this "
                 "mass.")
  p.add_argument("--seed", type=int, default=0, help="Sampling seed (NumPy's generator).")
  p.add_argument("--kv_policy", default="recent", help=f"One of {cache_lib.POLICIES}.")
  p.add_argument("--kv_budget", type=int, default=0, help="Cache slots per layer (0: the whole "
                 "text for full, else the training window or the whole text if shorter).")
  p.add_argument("--kv_recent", type=int, default=-1, help="gravity: newest tokens always kept "
                 "(-1: half the budget).")
  p.add_argument("--kv_terms", default="tag,surprisal,attention", help="gravity: the terms of "
                 "a token's mass.")
  p.add_argument("--branches", default="mapped", choices=model_lib.OFFLOAD,
                 help="The BAN's branch kernels: memory-mapped from the file or loaded.")
  return p


def _prompt(args) -> str:
  if args.prompt_file is not None:
    try:
      with open(args.prompt_file, encoding="utf-8") as f:
        text = f.read()
    except (OSError, UnicodeDecodeError) as e:
      raise banx.BanxError(f"--prompt_file={args.prompt_file} cannot be read as UTF-8 text "
                           f"({e}).") from e
  elif args.prompt == "-" or (args.prompt is None and not sys.stdin.isatty()):
    text = sys.stdin.read()
  else:
    text = args.prompt or ""
  if not text:
    raise banx.BanxError("the prompt is empty; pass --prompt=TEXT, --prompt_file=FILE or text "
                         "on stdin with --prompt=-.")
  return text


def run(argv) -> None:
  """Everything after parsing; raises BanxError for bad input."""
  args = _parser().parse_args(argv)
  if args.length < 1:
    raise banx.BanxError(f"--length={args.length} must be at least 1.")
  if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
    raise banx.BanxError("--temperature must be >= 0, --top_p in (0, 1] and --top_k >= 0.")
  prompt = _prompt(args)
  model = model_lib.load(args.model, branches=args.branches)
  tokenizer = tokenizer_lib.ByteTokenizer(model.header["tokenizer"], args.model)
  if args.top_k > model.vocab_size:
    raise banx.BanxError(f"--top_k={args.top_k} exceeds the vocabulary ({model.vocab_size}).")
  ids = np.concatenate([[tokenizer.bos_id], tokenizer.encode(prompt)])
  # By default a bounded cache holds the training window, but never more slots than the text
  # can fill: a file's seq_len of a million must not allocate a million-slot cache for a
  # sentence (with a budget at least the text's length, nothing is evicted either way).
  budget = args.kv_budget or (len(ids) + args.length if args.kv_policy == "full"
                              else min(model.seq_len, len(ids) + args.length))
  terms = tuple(t for t in args.kv_terms.split(",") if t)
  try:
    spec = cache_lib.Spec(args.kv_policy, slots=budget,
                          recent=None if args.kv_recent < 0 else args.kv_recent, terms=terms)
  except ValueError as e:
    raise banx.BanxError(f"{e} (--kv_policy, --kv_budget, --kv_recent, --kv_terms)") from e

  out = sys.stdout.buffer
  out.write(prompt.encode("utf-8"))
  out.flush()

  def emit(token):
    out.write(tokenizer.to_bytes([token]))
    out.flush()

  try:
    sampling.generate(model, ids, length=args.length, spec=spec, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                      eos_id=tokenizer.eos_id, on_token=emit)
  except ValueError as e:
    raise banx.BanxError(str(e)) from e
  out.write(b"\n")
  out.flush()


def main(argv=None):
  try:
    run(sys.argv[1:] if argv is None else argv)
  except banx.BanxError as e:
    _fail(str(e))

if __name__ == "__main__":
  main()
