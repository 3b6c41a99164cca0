"""Tests for ban_jax/diagnostics/cloze.py."""

import numpy as np

from ban_jax.diagnostics import cloze

TEXT = ("The city lies on the river and was founded by Romans in 1143 after a war. "
        "Its mayor is Anna Berg and it had 25,000 inhabitants. In March the river floods.")


def test_finds_names_numbers_and_dates_with_fixed_length_prefixes():
  items = cloze.find_items([TEXT], 20, limit=100)
  got = {(i.answer, i.kind) for i in items}
  assert {("Romans", "name"), ("1143", "date"), ("Anna", "name"), ("Berg", "name"),
          ("25,000", "number"), ("March", "date")} <= got
  # Sentence openers are not names.
  assert not {a for a, k in got if a in ("Its", "In")}
  for i in items:
    assert len(i.prefix.encode()) == 20 and i.prefix.endswith(" ")
    assert TEXT.find(i.prefix + i.answer) >= 0


def test_words_are_whole_or_not_candidates():
  text = "The composer Antonín Dvořák wrote music in the 1990s and in 1879 at Prague."
  got = [i.answer for i in cloze.find_items([text], 12, limit=100)]
  assert "Prague" in got and "1879" in got
  assert not {"Anton", "Dvo", "1990", "Antonín", "Dvořák"} & set(got)
  assert cloze.first_word("1990s were") == "" and cloze.first_word("Paris.") == "Paris"


def test_counts_planted_errors_exactly():
  answers = ["Paris", "1879", "3.5", "Anna"] * 5
  generated = [a + " was" for a in answers]
  wrong = [1, 4, 6, 11, 19]
  for k in wrong:
    generated[k] = "Lyon." if k % 2 else "18790 x"
  errors = cloze.errors(generated, answers)
  assert errors.sum() == len(wrong)
  np.testing.assert_array_equal(np.flatnonzero(errors), wrong)
  assert cloze.errors(["3.5, then"], ["3.5"]).sum() == 0
  assert cloze.first_word(" x") == ""
