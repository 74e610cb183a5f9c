"""Suite-wide settings.

Commands default to as many torch threads as the process has cores; the suite runs two
workers on two cores, so each worker (and each command it runs in-process or as a
subprocess) computes with one thread, as OMP_NUM_THREADS=1 asks. A test that checks the
default itself removes the variable (tests/core/test_threads.py).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
