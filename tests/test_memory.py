"""glibc's malloc thresholds, raised once per process by the first run (inference/memory.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = "from bayesdl.inference.memory import keep_freed_memory as k; print(k(), k())"


def _run(env_value: str | None) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k != "BAYESDL_MALLOPT"}
    if env_value is not None:
        env["BAYESDL_MALLOPT"] = env_value
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")
def test_thresholds_are_raised_once_on_linux_unless_switched_off():
    import ctypes
    import ctypes.util

    glibc = hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallopt")
    assert _run(None) == ("True True" if glibc else "False False")
    assert _run("0") == "False False"
