"""The Triton MSDA kernels, run on the CPU through Triton's interpreter (small shapes).

``TRITON_INTERPRET=1`` has to be set before triton is imported, so the checks run in a fresh
interpreter (``_msda_triton_interp.py``)."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_triton_kernels_match_reference_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET='1')
    proc = subprocess.run([sys.executable, os.path.join(HERE, '_msda_triton_interp.py')],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'failures: []' in proc.stdout
