"""bench/tpu_aot.py: the table's largest-batch column says what the search found, or why not."""

from bench import tpu_aot


def _cell(**report):
  base = dict(fits=True, hbm_per_device_bytes=2 ** 34, programs={"train": {"total": 2 ** 30}})
  return dict(preset="smoke", topology="v5p-8", global_batch=64, status="fits", wall_s=60.0,
              report=dict(base, **report))


def test_the_largest_batch_column():
  assert tpu_aot._largest(_cell(largest_batch=576)) == "576"
  assert tpu_aot._largest(_cell(largest_batch=4096, largest_batch_capped=True)) == "≥ 4096"
  assert tpu_aot._largest(_cell()) == "–"                        # never searched
  kept = dict(_cell(), largest_batch_status="timeout (1800 s)")  # a row kept after a failed rerun
  assert tpu_aot._largest(kept) == "timeout (1800 s)"
  rows = tpu_aot.report_md({"cells": [kept]}).splitlines()
  assert any(r.startswith("| smoke | v5p-8 | 64 | yes |") and r.endswith("timeout (1800 s) |")
             for r in rows)
