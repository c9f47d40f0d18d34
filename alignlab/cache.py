"""Where alignlab keeps what it computes once and reuses: testbed models, reference log-probs,
samples drawn from a reference. ``$ALIGNLAB_CACHE`` or ``~/.cache/alignlab`` unless given.

A cached number is only reusable where it would come out the same. Floating-point results on a
CPU depend on the instruction set the kernels use (torch's CPU capability and MKL's own choice,
which ``MKL_ENABLE_INSTRUCTIONS`` caps), on the CPU vendor (MKL takes other paths on AMD and Intel),
on settings that pick MKL's and oneDNN's kernels (``MKL_CBWR`` and others in ``BIT_SETTINGS``) and
on the number of intra-op threads; on a GPU, on the device. ``machine_signature`` names all
of that, and the cache keys include it, so a machine (or thread count) that computes other bits
computes its own entry instead of reusing another's.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("ALIGNLAB_CACHE") or "~/.cache/alignlab").expanduser()


def model_fingerprint(name_or_path: str) -> str:
    """Identifies a model's weights cheaply: for a local directory, the names, sizes and
    modification times of its files; for a hub name, the name."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return name_or_path
    parts = [str(path.resolve())]
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            parts.append(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts)


# Environment settings that change which kernels MKL and oneDNN run, named in the signature when set:
# MKL's conditional numerical reproducibility mode, its CPU-type override, oneDNN's instruction cap.
BIT_SETTINGS = ("MKL_CBWR", "MKL_DEBUG_CPU_TYPE", "ONEDNN_MAX_CPU_ISA")


@functools.cache
def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("vendor_id", "CPU implementer")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_signature(threads: int | None = None) -> dict[str, str | int]:
    """What changes the bits of a computation on this machine: the device (``cpu``, or the CUDA
    device's name), on a CPU the instruction set torch's kernels use, MKL's instruction cap, the
    CPU vendor, the number of intra-op threads (``threads``, default torch's current number), and
    the settings of ``BIT_SETTINGS`` that are set."""
    import torch

    if torch.cuda.is_available():
        return {"device": f"cuda:{torch.cuda.get_device_name()}"}
    return {"device": "cpu", "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl_instructions": os.environ.get("MKL_ENABLE_INSTRUCTIONS", ""), "cpu_vendor": _cpu_vendor(),
            "threads": torch.get_num_threads() if threads is None else threads,
            **{name.lower(): os.environ[name] for name in BIT_SETTINGS if os.environ.get(name)}}


def describe_machine(signature: dict) -> str:
    """One line: ``cpu AVX2 (AuthenticAMD), 2 threads`` or ``cuda:NVIDIA H100``."""
    if signature.get("device") != "cpu":
        return str(signature.get("device"))
    mkl = f", MKL capped at {signature['mkl_instructions']}" if signature.get("mkl_instructions") else ""
    threads = signature.get("threads")
    return (f"cpu {signature.get('cpu_capability')} ({signature.get('cpu_vendor')}){mkl}, "
            f"{threads} thread{'s' if threads != 1 else ''}")
