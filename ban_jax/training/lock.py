"""One writer per workdir: a lock file naming its holder, refreshed while the run lives.

Two runs in one workdir (a second notebook cell, a re-submitted job) would interleave
checkpoints and metrics. The lock is `workdir/ban_jax.lock`, a JSON object naming the holder
(host, pid, start time, a random token) and the time of its last refresh. A run refreshes it
from a background thread every `refresh_s` seconds (so a long compile or evaluation does not
look like a dead run) and at every log step and checkpoint, where it also learns whether the
lock was taken from it. A second run stops with one line naming the holder, unless:
- the holder is this process (a notebook cell run again): it takes the lock back;
- the holder is a process of this host that no longer exists: taken over, with a warning;
- the last refresh is older than 3 refresh intervals (a holder on another host that died or
  froze): taken over, with a warning.

Sound where creating a file with O_CREAT | O_EXCL is atomic across every writer: local
filesystems (ext4, xfs, btrfs, tmpfs, APFS) and NFS v3 and later. gcsfuse and other object-store
mounts promise no exclusive create across machines: two runs started within seconds of each
other on different hosts can both take the lock there; the loser finds out at its next refresh
(the file then names the other token) and stops, having written at most that many steps.
"""

import json
import os
import socket
import threading
import time
import uuid

from absl import logging
import jax

from ban_jax.errors import UserError

NAME = "ban_jax.lock"
STALE_INTERVALS = 3


class LockLost(UserError):
  """The lock of a running run was taken over by another run."""


def _read(path: str) -> dict | None:
  """The holder recorded in `path`; {} when unreadable (being written, or damaged); None when
  there is no lock."""
  try:
    with open(path) as f:
      holder = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def describe(holder: dict) -> str:
  started = holder.get("started")
  when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)) if isinstance(
      started, (int, float)) else "an unknown time"
  return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {when}"


class WorkdirLock:
  """The lock of one workdir, held by this process; a context manager.

  Args:
    workdir: an existing folder.
    refresh_s: seconds between refreshes; a lock not refreshed for 3 of its own intervals is
      stale. The holder's interval is the one written in the file.
    clock: the wall clock (tests replace it).
  """

  def __init__(self, workdir: str, *, refresh_s: float = 60.0, clock=time.time):
    self.path = os.path.join(workdir, NAME)
    self._refresh_s = float(refresh_s)
    self._clock = clock
    self._me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                "refresh_s": self._refresh_s}
    self._held = False
    self._lost = None
    self._step = None
    self._stop = threading.Event()
    self._thread = None
    self._mutex = threading.Lock()

  # -- taking and giving back

  def acquire(self):
    """Takes the lock, or raises a UserError naming its holder and what to do."""
    now = self._clock()
    self._me.update(started=now, refreshed=now)
    for _ in range(3):  # a lock removed or replaced between our looks: look again
      if self._create():
        break
      holder = _read(self.path)
      if holder is None:
        continue
      reason = self._takeover_reason(holder, now)
      if reason is None:
        raise UserError(
            f"workdir {os.path.dirname(self.path)} is in use by another run ({describe(holder)}"
            f", last refreshed {self._age(holder, now)} ago); wait for it to finish or stop it, "
            f"or use another --workdir. If that run is gone, delete {self.path}.")
      if reason != "mine":
        logging.warning("taking over the lock of %s: %s.", os.path.dirname(self.path), reason)
      self._write()
      if (_read(self.path) or {}).get("token") == self._me["token"]:
        break
    else:
      raise UserError(f"could not take the lock {self.path}: it changed under us three times; "
                      "is another run starting in this workdir? Try again.")
    self._held = True
    self._thread = threading.Thread(target=self._beat, name="ban_jax-lock", daemon=True)
    self._thread.start()
    return self

  def release(self):
    """Stops refreshing and removes the lock if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self._held and (_read(self.path) or {}).get("token") == self._me["token"]:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
    self._held = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()  # on any exit, KeyboardInterrupt included

  # -- while held

  def refresh(self, step: int | None = None):
    """Records that the run lives (and its step). Raises LockLost if another run took it."""
    if step is not None:
      self._step = step
    self._refresh()
    if self._lost:
      raise LockLost(self._lost)

  def _refresh(self):
    with self._mutex:
      if not self._held or self._lost:
        return
      holder = _read(self.path)
      if holder is None or (holder and holder.get("token") != self._me["token"]):
        self._lost = (f"the lock of {os.path.dirname(self.path)} was taken over by another run"
                      f" ({describe(holder) if holder else 'the file is gone'}); this run stops "
                      "so that two writers do not mix checkpoints. Run one at a time in a "
                      "workdir.")
        return
      self._me["refreshed"] = self._clock()
      if self._step is not None:
        self._me["step"] = self._step
      try:
        self._write()
      except OSError as e:  # a full disk: the run meets it in its own writes, with its own error
        logging.warning("could not refresh %s (%s)", self.path, e.strerror)

  def _beat(self):
    while not self._stop.wait(self._refresh_s):
      self._refresh()

  # -- the file

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    try:
      with os.fdopen(fd, "w") as f:
        json.dump(self._me, f)
    except BaseException:
      os.remove(self.path)
      raise
    return True

  def _write(self):
    tmp = f"{self.path}.tmp{os.getpid()}"
    try:
      with open(tmp, "w") as f:
        json.dump(self._me, f)
      os.replace(tmp, self.path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)

  def _age(self, holder: dict, now: float) -> str:
    refreshed = holder.get("refreshed")
    if not isinstance(refreshed, (int, float)):
      try:
        refreshed = os.path.getmtime(self.path)
      except OSError:
        return "?"
    return f"{max(0.0, now - refreshed):.0f} s"

  def _takeover_reason(self, holder: dict, now: float) -> str | None:
    """Why the lock described by `holder` may be taken, or None if it is held."""
    host, pid = holder.get("host"), holder.get("pid")
    if host == self._me["host"] and pid == self._me["pid"]:
      return "mine"
    if host == self._me["host"] and isinstance(pid, int) and not _alive(pid):
      return f"its holder ({describe(holder)}) is no longer running"
    refreshed, interval = holder.get("refreshed"), holder.get("refresh_s")
    if not isinstance(refreshed, (int, float)):  # unreadable: judge by the file's own age
      try:
        refreshed = os.path.getmtime(self.path)
      except OSError:
        return None
    if not isinstance(interval, (int, float)) or interval <= 0:
      interval = self._refresh_s
    if now - refreshed > STALE_INTERVALS * interval:
      return (f"its holder ({describe(holder)}) last refreshed it {now - refreshed:.0f} s ago, "
              f"more than {STALE_INTERVALS} x {interval:g} s")
    return None


class _NotHolding:
  """What processes other than 0 hold: nothing (process 0 holds the lock for the run)."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    pass

  def refresh(self, step=None):
    pass


def hold(workdir: str, *, refresh_s: float = 60.0):
  """The lock a run holds in `workdir`: taken by process 0 only, once for the whole run."""
  if jax.process_index() != 0:
    return _NotHolding()
  return WorkdirLock(workdir, refresh_s=refresh_s)
