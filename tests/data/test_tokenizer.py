"""Tokenizers."""

import numpy as np
import pytest

from ban_jax.data import tokenizer


def test_bytes_round_trip_and_byte_counts():
  tok = tokenizer.ByteTokenizer()
  text = "Gödel's ∀x — naïve 日本"
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and ids.min() >= tok.num_specials and ids.max() < tok.vocab_size
  assert len(ids) == len(text.encode("utf-8"))
  assert tok.decode(ids) == text
  assert tok.decode([tokenizer.BOS, *ids, tokenizer.EOS, tokenizer.PAD]) == text
  assert tok.token_bytes[ids].sum() == len(text.encode("utf-8"))
  assert tok.token_bytes[[tokenizer.PAD, tokenizer.BOS, tokenizer.EOS]].sum() == 0
  assert (tok.bos_id, tok.eos_id) == (tokenizer.BOS, tokenizer.EOS)


def test_sentencepiece_round_trip_and_exact_byte_counts(tmp_path):
  pytest.importorskip("sentencepiece")
  rng = np.random.default_rng()
  words = ["gravity", "attention", "attractor", "naïve", "Gödel", "well", "branch", "the", "of"]
  texts = [" ".join(rng.choice(words, size=40)) + f" {i} ∀x." for i in range(300)]
  path = tokenizer.train_sentencepiece(texts, str(tmp_path / "spm"), vocab_size=300)
  tok = tokenizer.SentencePieceTokenizer(path)
  for text in texts[:20] + ["unseen 日本 text"]:   # CJK falls back to bytes
    ids = tok.encode(text)
    assert ids.min() > tokenizer.EOS
    assert tok.decode(ids) == text
    assert tok.token_bytes[ids].sum() == len(text.encode("utf-8"))
  assert tok.token_bytes[[tokenizer.PAD, tokenizer.BOS, tokenizer.EOS]].sum() == 0
  assert (tok.bos_id, tok.eos_id) == (tokenizer.BOS, tokenizer.EOS)


SPM_FUZZ = """
import json, random, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from ban_jax.data import tokenizer
from ban_jax.errors import UserError
base, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(base, "rb").read()
rng = random.Random(0)
for i in range(count):
  b = bytearray(data)
  if i % 4 == 0:
    b = b[:rng.randrange(len(b))]
  else:
    for _ in range(rng.randint(1, 8)):
      b[rng.randrange(len(b))] = rng.randrange(256)
  open(out, "wb").write(bytes(b))
  print(json.dumps({"start": i}), flush=True)
  try:
    tok = tokenizer.SentencePieceTokenizer(out)
    tok.decode(tok.encode("the naive gravity well"))
    result = "ok"
  except UserError as e:
    result = "refused: " + str(e)
  print(json.dumps({"done": i, "result": result}), flush=True)
"""


def test_a_damaged_sentencepiece_model_is_one_error_line(tmp_path):
  """Flipped bytes and truncations of a real model file, in a child process: the model is
  parsed by C++, and a crash there must fail this test, not kill the test run."""
  pytest.importorskip("sentencepiece")
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  words = ["gravity", "attention", "attractor", "naïve", "Gödel", "well", "branch", "the", "of"]
  texts = [" ".join(rng.choice(words, size=40)) + f" {i} ∀x." for i in range(300)]
  path = tokenizer.train_sentencepiece(texts, str(tmp_path / "spm"), vocab_size=300)
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run([sys.executable, "-c", SPM_FUZZ, path, str(tmp_path / "bad.model"),
                        "300"], capture_output=True, text=True, timeout=300, cwd=repo,
                       env=dict(os.environ, PYTHONPATH=repo))
  lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert out.returncode == 0, (lines[-1:], out.stderr[-2000:])
  results = [r["result"] for r in lines if "done" in r]
  assert len(results) == 300
  refused = [r for r in results if r.startswith("refused: ")]
  assert all("\n" not in r and "is unreadable" in r or "BOS or EOS" in r for r in refused)
  assert refused and len(refused) < len(results), len(refused)
