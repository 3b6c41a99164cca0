"""Factual cloze: prefixes of clean text whose true continuation is a name, a number or a date.

The field theory's "hallucination" check needs answers that can be wrong. At the scale of these
models (a byte-level LM of ~100k parameters) that is the next word where the text states a fact:
"... was born in 1879", "... the capital, Paris". An error is a first generated word that
differs from the truth; the graded error, which carries the signal when exact matches are rare,
is the true word's surprisal under the model (teacher-forced, nats) and its first byte's rank.
"""

import dataclasses
import re

import numpy as np

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
KINDS = ("name", "number", "date")
# A word the answer is read from: digits with inner separators, or ASCII letters (with inner
# apostrophes and hyphens), ending where the word ends (not before "s" in "1990s", nor before
# "ř" in "Dvořák": such words are no candidates rather than cut ones).
_WORD = re.compile(r"(?:\d+(?:[.,]\d+)*|[A-Za-z]+(?:['-][A-Za-z]+)*)(?![^\W_])")
_SENTENCE_END = re.compile(r"[.!?:;\"'(\[\n]\s*$")
# Capitalised words that open clauses rather than name things.
_NOT_NAMES = frozenset(
    "The A An In On At By For From Of To As It Its This That These Those He She They His Her "
    "Their We I And But Or If When While After Before During Since Although However Also "
    "There Here Some Many Most All Both Each Other Such".split())


@dataclasses.dataclass(frozen=True)
class Item:
  """One cloze question: `prefix` (ends with the space before the answer) and `answer`."""
  prefix: str
  answer: str
  kind: str
  source: int   # index of the document it came from


def kind_of(word: str, before: str) -> str | None:
  """"date", "number", "name" or None (not a cloze answer), for `word` following `before`."""
  if word in MONTHS or (re.fullmatch(r"1[0-9]{3}|20[0-9]{2}", word) is not None):
    return "date"
  if word[0].isdigit():
    return "number"
  if (word[0].isupper() and word not in _NOT_NAMES and len(word) > 1
      and not _SENTENCE_END.search(before[-3:] if before else "\n")):
    return "name"
  return None


def find_items(documents, prefix_bytes: int, *, limit: int, seed: int = 0):
  """Cloze items from `documents`, every prefix exactly `prefix_bytes` UTF-8 bytes long.

  Candidates are words preceded by a space, at least `prefix_bytes` into their document;
  `limit` of them are drawn (seeded), a third of each kind where there are enough.

  Args:
    documents: iterable of str.
    prefix_bytes: the prefix length (a fixed length keeps the queries comparable).
    limit: the most items returned.
    seed: of the draw.

  Returns:
    list of `Item`, in document order.
  """
  found = []
  for index, text in enumerate(documents):
    data = text.encode("utf-8")
    for match in _WORD.finditer(text):
      start = len(text[:match.start()].encode("utf-8"))
      if start < prefix_bytes or data[start - 1:start] != b" ":
        continue
      prefix = data[start - prefix_bytes:start]
      kind = kind_of(match.group(), text[max(match.start() - 4, 0):match.start()].rstrip(" "))
      if kind is None:
        continue
      try:
        found.append(Item(prefix.decode("utf-8"), match.group(), kind, index))
      except UnicodeDecodeError:   # the cut fell inside a character
        continue
  # Names outnumber numbers and dates several times over: draw the kinds evenly, as far as
  # each has items, then fill up with the rest.
  rng = np.random.default_rng(seed)
  by_kind = {k: [i for i, item in enumerate(found) if item.kind == k] for k in KINDS}
  chosen = set()
  for rows in by_kind.values():
    take = min(len(rows), limit // len(KINDS))
    chosen.update(rng.choice(rows, take, replace=False).tolist() if take else [])
  rest = [i for i in range(len(found)) if i not in chosen]
  extra = min(len(rest), limit - len(chosen))
  chosen.update(rng.choice(rest, extra, replace=False).tolist() if extra else [])
  return [found[i] for i in sorted(chosen)]


def first_word(text: str) -> str:
  """The first word of generated text, as `find_items` reads answers ("" if none)."""
  match = _WORD.match(text)
  return match.group() if match else ""


def errors(generated, answers) -> np.ndarray:
  """1 where the first word of a generated continuation is not the answer, else 0.

  Args:
    generated: list of str, each what the model wrote after a prefix.
    answers: list of str, the true words.

  Returns:
    int [items].
  """
  if len(generated) != len(answers):
    raise ValueError(f"{len(generated)} generations for {len(answers)} answers.")
  return np.asarray([first_word(g) != a for g, a in zip(generated, answers)], np.int32)


def shape(word: str) -> str:
  """The answer's type as its spelling shows it: "number", "capitalised", "lower" or ""."""
  if not word:
    return ""
  if word[0].isdigit():
    return "number"
  return "capitalised" if word[0].isupper() else "lower"


def shape_errors(generated, answers) -> np.ndarray:
  """1 where the first generated word is not even of the answer's type (a lower-case word or
  a number where a name belongs, ...), else 0: the coarse error that varies when exact matches
  are near zero."""
  if len(generated) != len(answers):
    raise ValueError(f"{len(generated)} generations for {len(answers)} answers.")
  return np.asarray([shape(first_word(g)) != shape(a) for g, a in zip(generated, answers)],
                    np.int32)
