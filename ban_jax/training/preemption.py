"""Stopping cleanly when the machine is taken away (Colab, preemptible Cloud TPU VMs).

On one process, SIGTERM or SIGINT sets a flag; the loop checks it after each step, saves that
step and exits 0. A second signal kills the process at once, as the signal would have.

On several processes a per-host signal would make hosts stop at different steps (and orbax's
save is collective), so there the loop asks JAX's preemption sync point instead: the
coordination service hears the preemption notice and makes every host answer True at the same
step. That path needs a TPU cluster; tests replace `reached_preemption_sync_point`.
"""

import os
import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
  """Context manager: installs the handlers; `should_stop(step)` after each step."""

  def __init__(self, *, use_sync_point: bool | None = None):
    # The sync point exists once jax.distributed runs with a coordination service.
    self._use_sync = (jax.process_count() > 1 if use_sync_point is None else use_sync_point)
    self.signal_name = None
    self._previous = {}

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
    return False

  def _handle(self, signum, frame):
    del frame
    if self.signal_name is not None:  # the second one: stop now, as the signal would have
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint after this step, then exiting "
                    "(send it again to exit at once).", self.signal_name)

  def should_stop(self, step: int) -> bool:
    """Whether to save `step` and stop; every process calls this at every step."""
    if self.signal_name is not None:
      return True
    if not self._use_sync:
      return False
    try:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = "preemption notice"
        return True
    except RuntimeError as e:  # no preemption sync manager in this cluster
      logging.warning("no preemption sync point (%s); relying on signals only.", e)
      self._use_sync = False
    return False
