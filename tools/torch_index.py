"""Where `make venv` gets torch: the pip options to add to `pip install torch==X`, printed on stdout.

On a machine without a CUDA GPU a plain `pip install torch` on Linux fetches the CUDA build (a wheel of several
hundred MB plus the CUDA libraries) that it will never use; PyTorch's CPU index serves the CPU build. So: with no
CUDA GPU (no working `nvidia-smi`) and the CPU index answering within TIMEOUT seconds, print
`--index-url <the CPU index>`; otherwise print nothing, and pip resolves the plain requirement as it is set up to
(with a GPU: the CUDA build, as wanted; offline or behind a mirror: whatever the mirror holds). What was chosen,
and why, goes to stderr.

    python tools/torch_index.py [INDEX_URL]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import urllib.request

__all__ = ["CPU_INDEX", "TIMEOUT", "answers", "cuda_gpu", "main"]

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TIMEOUT = 5.0  # seconds: an index that takes longer (or a name that never resolves) is not worth the wait


def cuda_gpu() -> bool:
    """Whether this machine has a CUDA GPU its driver sees (``nvidia-smi -L`` lists one)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def answers(url: str, timeout: float = TIMEOUT) -> bool:
    """Whether ``url`` answers within ``timeout`` seconds, name lookup included (which urllib's own timeout does
    not bound: the request runs in a thread that is given up on)."""
    result: list[bool] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:
                result.append(reply.status < 400)
        except Exception:  # any failure means: do not use it
            result.append(False)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def main(argv: list[str]) -> int:
    index = argv[0] if argv else CPU_INDEX
    if cuda_gpu():
        print("torch: a CUDA GPU is here, so the plain requirement (its CUDA build)", file=sys.stderr)
    elif answers(index.rstrip("/") + "/torch/"):
        print(f"torch: no CUDA GPU here, so the CPU build from {index}", file=sys.stderr)
        print(f"--index-url {index}")
    else:
        print(
            f"torch: no CUDA GPU here, but {index} could not be reached within {TIMEOUT:g} s: the plain requirement, "
            "as pip is set up to resolve it (on a stock setup on Linux, the CUDA build)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
