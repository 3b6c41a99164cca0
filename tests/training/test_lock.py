"""The workdir lock: refused while held, taken over only from a gone or silent holder."""

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from ban_jax.errors import UserError
from ban_jax.training import lock as lock_lib


def _write_holder(workdir, **fields):
  holder = {"host": "elsewhere", "pid": 12345, "token": "theirs", "started": time.time(),
            "refreshed": time.time(), "refresh_s": 60.0, **fields}
  with open(os.path.join(workdir, lock_lib.NAME), "w") as f:
    json.dump(holder, f)
  return holder


def _holder(workdir):
  with open(os.path.join(workdir, lock_lib.NAME)) as f:
    return json.load(f)


def test_the_lock_names_its_holder_and_goes_away_on_release(tmp_path):
  with lock_lib.WorkdirLock(str(tmp_path)) as lock:
    holder = _holder(tmp_path)
    assert holder["pid"] == os.getpid() and holder["host"] == lock._me["host"]
    assert holder["started"] <= holder["refreshed"] <= time.time()
  assert not os.path.exists(tmp_path / lock_lib.NAME)


def test_a_live_holder_elsewhere_is_refused_in_one_line(tmp_path):
  _write_holder(str(tmp_path))
  with pytest.raises(UserError) as e:
    lock_lib.WorkdirLock(str(tmp_path)).acquire()
  message = str(e.value)
  assert "in use by another run (pid 12345 on host elsewhere" in message
  assert "use another --workdir" in message and "\n" not in message
  assert _holder(tmp_path)["token"] == "theirs"   # untouched


def test_a_silent_holder_is_taken_over_after_three_intervals(tmp_path, caplog):
  now = time.time()
  _write_holder(str(tmp_path), refreshed=now - 3 * 10.0 + 2, refresh_s=10.0)
  with pytest.raises(UserError):  # 28 s silent, 30 s allowed
    lock_lib.WorkdirLock(str(tmp_path), clock=lambda: now).acquire()
  _write_holder(str(tmp_path), refreshed=now - 3 * 10.0 - 2, refresh_s=10.0)
  with caplog.at_level(logging.WARNING):
    with lock_lib.WorkdirLock(str(tmp_path), clock=lambda: now):
      assert _holder(tmp_path)["pid"] == os.getpid()
  assert any("taking over" in r.getMessage() and "32 s ago" in r.getMessage()
             for r in caplog.records)


def test_a_dead_process_of_this_host_is_taken_over(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _write_holder(str(tmp_path), host=lock_lib.WorkdirLock(str(tmp_path))._me["host"],
                pid=dead.pid)
  with caplog.at_level(logging.WARNING):
    with lock_lib.WorkdirLock(str(tmp_path)):
      assert _holder(tmp_path)["pid"] == os.getpid()
  assert any("no longer running" in r.getMessage() for r in caplog.records)


def test_the_same_process_takes_its_own_lock_back(tmp_path, caplog):
  """A notebook cell run again while an earlier run of it still holds the lock."""
  first = lock_lib.WorkdirLock(str(tmp_path)).acquire()
  with caplog.at_level(logging.WARNING):
    second = lock_lib.WorkdirLock(str(tmp_path)).acquire()
  assert not caplog.records
  assert _holder(tmp_path)["token"] == second._me["token"]
  with pytest.raises(lock_lib.LockLost):   # the earlier one learns it lost the workdir
    first.refresh(5)
  first.release()
  assert os.path.exists(tmp_path / lock_lib.NAME)   # not the earlier one's to remove
  second.release()
  assert not os.path.exists(tmp_path / lock_lib.NAME)


def test_keyboard_interrupt_releases(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    with lock_lib.WorkdirLock(str(tmp_path)):
      raise KeyboardInterrupt
  assert not os.path.exists(tmp_path / lock_lib.NAME)


def test_refreshes_record_the_step_and_run_in_the_background(tmp_path):
  with lock_lib.WorkdirLock(str(tmp_path), refresh_s=0.05) as lock:
    lock.refresh(7)
    first = _holder(tmp_path)["refreshed"]
    assert _holder(tmp_path)["step"] == 7
    deadline = time.time() + 10
    while _holder(tmp_path)["refreshed"] == first:
      assert time.time() < deadline, "the background refresh never ran"
      time.sleep(0.02)


def test_a_taken_lock_stops_the_run_at_its_next_refresh(tmp_path):
  with lock_lib.WorkdirLock(str(tmp_path)) as lock:
    _write_holder(str(tmp_path))
    with pytest.raises(lock_lib.LockLost, match="taken over by another run .pid 12345"):
      lock.refresh(3)
  assert _holder(tmp_path)["token"] == "theirs"   # the new holder keeps it
