"""`python -m ttrl_fast.info` reports every backend and op, and never fails."""
import subprocess
import sys

from ttrl_fast import backends


def test_info_lists_every_backend_and_op():
    out = subprocess.run([sys.executable, "-m", "ttrl_fast.info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in backends.BACKENDS:
        assert f"  {name} " in out.stdout
    for op in backends.ops():
        assert op in out.stdout
    assert "torch" in out.stdout and "compiled extensions" in out.stdout
