"""bench/attention.py fills its table over several commands (--deadline_s, --resume)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "bench", "attention.py")
SMALL = ["--impls=dot", "--modes=fwd", "--repeats=1", "--mem_limit_gb=8"]


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, SCRIPT, *SMALL, *args], capture_output=True,
                        text=True, env=env, timeout=300)


def test_resume_keeps_finished_rows_and_runs_only_the_missing_ones(tmp_path):
  out = str(tmp_path / "r.json")
  first = _run("--lengths=64", f"--out={out}")
  assert first.returncode == 0, first.stderr
  row_64 = json.load(open(out))["results"][0]
  assert row_64["status"] == "ok" and row_64["device_kind"]

  second = _run("--lengths=64,128", f"--out={out}", "--resume")
  assert second.returncode == 0, second.stderr
  assert "1 finished rows kept" in second.stdout
  record = json.load(open(out))
  assert record["complete"]
  assert [(r["length"], r["status"]) for r in record["results"]] == [(64, "ok"), (128, "ok")]
  assert record["results"][0] == row_64           # kept as it was, not run again


def test_deadline_stops_before_starting_and_resume_refuses_other_shapes(tmp_path):
  out = str(tmp_path / "r.json")
  stopped = _run("--lengths=64", f"--out={out}", "--deadline_s=1")
  assert stopped.returncode == 0, stopped.stderr
  assert "--resume to finish" in stopped.stdout
  record = json.load(open(out))
  assert not record["complete"] and record["results"] == []

  other = _run("--lengths=64", f"--out={out}", "--resume", "--block=256")
  assert other.returncode != 0
  assert "other shapes" in other.stderr and "block" in other.stderr
