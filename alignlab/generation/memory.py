"""How many sequences the native engine decodes at once when the caller does not say: as many as
fit in a share of the memory free on the model's device.

Why by hand: torch reports a CUDA device's free memory but not the host's, and a process in a
container sees the host's MemAvailable, not its container's limit; the cgroup files say that.
"""

from __future__ import annotations

import os

import torch

# ``batch_size=None``: the sequences decoding at once may take at most this share of the memory free
# on the model's device (their keys and values, and their logits while a token is drawn).
AUTO_MEMORY_SHARE = 0.25
AUTO_FALLBACK = 64  # when the model's shape or the free memory cannot be read


MEMINFO = "/proc/meminfo"
# A container's memory limit and use, and the line of its memory.stat that tells how much of the
# use is inactive file cache (the kernel reclaims it first, so it counts as free, as MemAvailable
# counts it): cgroup v2, then v1 (a v1 "no limit" is a huge number).
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat",
                 "inactive_file"),
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                 "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"))


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):  # missing, unreadable, or "max" (no limit)
        return None


def _stat_value(path: str, key: str) -> int:
    """The value of ``key`` in a cgroup's memory.stat (0 where the file or the key is missing)."""
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device``: CUDA's own count; on the host, Linux's MemAvailable, or less where
    the process's container (cgroup) allows less (its limit less its use, the use without its
    inactive file cache); None where none of it can be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = None
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, used_file, stat_file, cache_key in CGROUP_FILES:
        limit, used = _read_int(limit_file), _read_int(used_file)
        if limit is not None and used is not None and limit < 2**60:
            used = max(0, used - _stat_value(stat_file, cache_key))
            free = max(0, limit - used) if free is None else min(free, max(0, limit - used))
            break
    return free


def bytes_per_sequence(model, new_tokens: int, prompt_tokens: int = 0) -> int | None:
    """Memory one decoding sequence takes: the keys and values of its ``new_tokens`` and of a
    prompt row of ``prompt_tokens`` in every layer (the cache holds up to one prompt row a slot:
    the samples of a prompt share one, but as many prompts as slots can be live at once), and four
    copies of its logits (the output, the filtered and normalised copies of a draw). None when the
    config does not say the model's shape."""
    config = model.config
    get = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers, heads, hidden = (getattr(get, k, None) for k in ("num_hidden_layers", "num_attention_heads", "hidden_size"))
    vocab = getattr(get, "vocab_size", None)
    if not all(isinstance(v, int) and v > 0 for v in (layers, heads, hidden, vocab)):
        return None
    kv_heads = getattr(get, "num_key_value_heads", None) or heads
    head_dim = getattr(get, "head_dim", None) or hidden // heads
    size = next(model.parameters()).element_size()
    return layers * 2 * kv_heads * head_dim * (new_tokens + prompt_tokens) * size + 4 * vocab * 4


def torchrun_processes() -> int:
    """The processes torchrun started on this host (``LOCAL_WORLD_SIZE``; 1 when unset or not a
    positive number)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def auto_batch_size(model, sequences: int, new_tokens: int, prompt_tokens: int = 0,
                    processes: int | None = None) -> int:
    """How many of ``sequences`` decode at once when the caller leaves it to the engine: all of
    them when they fit in ``AUTO_MEMORY_SHARE`` of the device's free memory, else as many as do
    (at least one); ``AUTO_FALLBACK`` at most where the model's shape or the memory is unknown.
    On the host, the share is split between the run's ``processes`` on it (None:
    ``torchrun_processes``)."""
    each = bytes_per_sequence(model, new_tokens, prompt_tokens)
    device = next(model.parameters()).device
    free = free_memory(device)
    if each is None or free is None:
        return max(1, min(sequences, AUTO_FALLBACK))
    share = AUTO_MEMORY_SHARE
    if device.type == "cpu":  # the processes of a run on this host share its memory
        share /= max(1, torchrun_processes() if processes is None else processes)
    return max(1, min(sequences, int(free * share) // each))
