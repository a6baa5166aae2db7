"""Running one step of a long job (training, export, analysis) as a child Python process.

A child keeps TensorFlow's memory and threads out of the driver (a sweep or a tuning grid),
and a killed child loses only its own unfinished epoch: every step resumes on its own.
"""
import ctypes
import os
import signal
import subprocess
import sys

from fnet_tf.core.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fnet_tf/core/..

NOISE_PREFIXES = ("WARNING:", "INFO:", "W0000", "I0000", "E0000", "warnings.warn",
                  "fully_quantize")


def is_noise(line):
    """TensorFlow's start-up chatter, which would bury the child's progress lines."""
    return line.startswith(NOISE_PREFIXES) or "oneDNN" in line or "UserWarning" in line


class StepKilled(UserError):
    """A child step ended by a signal (SIGKILL from the OOM killer, a node going away): the
    step itself is sound, so running it again resumes it (the Ray executor retries these)."""


def _libc_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# resolved here, in the parent: between fork and exec the child only calls it (no dlopen there,
# whose loader lock another thread of the parent, a Ray worker's, may have held at the fork)
_PRCTL = _libc_prctl() if sys.platform == "linux" else None


def _die_with_parent():
    """In the child, before exec: on Linux, SIGKILL when the parent dies (a sweep driver or a
    Ray worker killed outright must not leave its training running unseen)."""
    _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_streamed(args, prefix):
    """Run ``python args`` in the caller's directory (so relative paths in ``args`` mean what
    the user typed), with this checkout's ``fnet_tf`` importable, echoing its output lines
    after ``prefix``; a failure raises UserError with the child's last line."""
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=_die_with_parent if _PRCTL is not None else None)
    last = ""
    for line in proc.stdout:
        line = line.rstrip()
        if line and not is_noise(line):
            print(f"{prefix} | {line}", flush=True)
            last = line
    code = proc.wait()
    if code < 0:
        raise StepKilled(f"{prefix}: step killed by signal {-code} ({last}); run this command "
                         f"again: the step resumes from its last checkpoint")
    if code != 0:
        raise UserError(f"{prefix}: step failed ({last}); fix that and re-run this command "
                        f"with the fix: finished steps are kept, a point that never trained an "
                        f"epoch starts again")
