"""The GPU session's two scripts run on the CPU (interpret mode, tiny shapes), so a lent GPU's
few minutes are not spent finding a broken script: bench/train_throughput.py and
bench/attention_pallas.py --smoke."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(script, *args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, os.path.join(REPO, "bench", script), *args],
                       capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  return res


def test_train_throughput_times_each_attention_choice_after_the_wait_file(tmp_path):
  out, wait = tmp_path / "t.json", tmp_path / "go"
  wait.write_text("done\n")
  _run("train_throughput.py", "--runs=tiny,smoke:pallas_fused", "--steps=1",
       "--warmup=0", f"--wait_file={wait}", f"--out={out}")
  rec = json.loads(out.read_text())
  assert not rec["errors"], rec["errors"]
  assert rec["wait_file_seen"]
  rows = {r["run"]: r for r in rec["results"]}
  assert set(rows) == {"tiny", "smoke:pallas_fused"}
  assert rows["smoke:pallas_fused"]["attention"] == "pallas_fused"
  assert rows["tiny"]["model"] == "transformer" and rows["smoke:pallas_fused"]["model"] == "ban"
  assert all(r["step_ms_median"] > 0 and r["compile_s"] > 0 for r in rows.values())


def test_train_throughput_names_an_unknown_attention(tmp_path):
  out = tmp_path / "t.json"
  _run("train_throughput.py", "--runs=smoke:cudnn", "--steps=1", "--warmup=0", f"--out={out}")
  rec = json.loads(out.read_text())
  assert rec["results"] == [] and "cudnn" in rec["errors"][0]["error"]


@pytest.mark.slow
def test_attention_pallas_smoke_runs_every_phase(tmp_path):
  # ~80 s on 2 cores: every check, variant, preset shape and long row at tiny sizes.
  out, done = tmp_path / "a.json", tmp_path / "done"
  _run("attention_pallas.py", "--smoke", f"--out={out}", f"--done_file={done}")
  rec = json.loads(out.read_text())
  assert done.exists()
  assert rec["passed_backwards"] == ["fused", "two-kernel"]
  assert all(c["status"] == "ok" for c in rec["checks"])
  assert all(r["status"] == "ok" for p in ("sweep", "presets", "long") for r in rec[p])
  assert all(r["agree"] for r in rec["sweep"] if "agree" in r)
  assert len(rec["best_two"]) == 2


@pytest.mark.slow
def test_attention_pallas_checks_both_backwards_against_float64(tmp_path):
  # ~25 s; tests/ops/gravity/test_pallas.py checks the same kernels in the default run.
  out = tmp_path / "a.json"
  _run("attention_pallas.py", "--smoke", "--check_only", f"--out={out}")
  rec = json.loads(out.read_text())
  assert {c["options"] for c in rec["checks"]} == {"two-kernel", "fused"}
  assert all(c["status"] == "ok" and c["rel_err"]["out"] < 3e-2 for c in rec["checks"])
