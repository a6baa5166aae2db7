"""Running one step of a long job (training, export, analysis) as a child Python process.

A child keeps TensorFlow's memory and threads out of the driver (a sweep or a tuning grid),
and a killed child loses only its own unfinished epoch: every step resumes on its own.
"""
import os
import subprocess
import sys

from fnet_tf.core.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fnet_tf/core/..

NOISE_PREFIXES = ("WARNING:", "INFO:", "W0000", "I0000", "E0000", "warnings.warn",
                  "fully_quantize")


def is_noise(line):
    """TensorFlow's start-up chatter, which would bury the child's progress lines."""
    return line.startswith(NOISE_PREFIXES) or "oneDNN" in line or "UserWarning" in line


def run_streamed(args, prefix):
    """Run ``python args`` in the caller's directory (so relative paths in ``args`` mean what
    the user typed), with this checkout's ``fnet_tf`` importable, echoing its output lines
    after ``prefix``; a failure raises UserError with the child's last line."""
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    last = ""
    for line in proc.stdout:
        line = line.rstrip()
        if line and not is_noise(line):
            print(f"{prefix} | {line}", flush=True)
            last = line
    if proc.wait() != 0:
        raise UserError(f"{prefix}: step failed ({last}); fix that and re-run this command "
                        f"with the fix: finished steps are kept, a point that never trained an "
                        f"epoch starts again")
