"""The host's and a container's free memory, which sizes the native engine's default batch."""

from __future__ import annotations

import pytest
import torch


def test_free_memory_reads_the_host_on_cpu():
    from alignlab.generation.memory import free_memory

    free = free_memory(torch.device("cpu"))
    assert free is not None and 0 < free < 2**50


@pytest.mark.parametrize("limit, used, want", [("1000000\n", "400000\n", 600_000), ("max\n", "400000\n", 2_048_000),
                                               ("9223372036854771712\n", "5\n", 2_048_000),
                                               ("1000000\n", "1200000\n", 0)])
def test_free_memory_is_at_most_what_the_container_allows(tmp_path, monkeypatch, limit, used, want):
    """The host has MemAvailable 2000 kB = 2,048,000 bytes. A cgroup limit of 1,000,000 bytes with
    400,000 used leaves 600,000; no limit ("max", or v1's huge number) leaves the host's figure;
    use above the limit leaves 0."""
    import alignlab.generation.memory as memory

    (tmp_path / "meminfo").write_text("MemTotal:       4000 kB\nMemFree:         100 kB\nMemAvailable:   2000 kB\n")
    (tmp_path / "max").write_text(limit)
    (tmp_path / "cur").write_text(used)
    monkeypatch.setattr(memory, "MEMINFO", str(tmp_path / "meminfo"))
    none = str(tmp_path / "none")  # no memory.stat either: nothing of the use is counted as cache
    monkeypatch.setattr(memory, "CGROUP_FILES", ((none, none, none, "inactive_file"),
                                                 (str(tmp_path / "max"), str(tmp_path / "cur"), none,
                                                  "total_inactive_file")))
    assert memory.free_memory(torch.device("cpu")) == want



@pytest.mark.parametrize("version, key", [(2, "inactive_file"), (1, "total_inactive_file")])
def test_free_memory_counts_the_containers_inactive_file_cache_as_free(tmp_path, monkeypatch, version, key):
    """A container's use counts the page cache of the files it read (the model, the data), which
    the kernel drops when memory is wanted. Limit 1,000,000 bytes, use 900,000 of which 500,000
    inactive file cache: 1,000,000 − (900,000 − 500,000) = 600,000 free, not 100,000 (the host's
    MemAvailable, 2,048,000, is larger). Active file cache and anonymous memory stay used."""
    import alignlab.generation.memory as memory

    (tmp_path / "meminfo").write_text("MemAvailable:   2000 kB\n")
    (tmp_path / "max").write_text("1000000\n")
    (tmp_path / "cur").write_text("900000\n")
    active = "total_active_file" if version == 1 else "active_file"
    (tmp_path / "stat").write_text(f"anon 300000\n{active} 100000\n{key} 500000\nshmem 0\n")
    monkeypatch.setattr(memory, "MEMINFO", str(tmp_path / "meminfo"))
    files = (str(tmp_path / "max"), str(tmp_path / "cur"), str(tmp_path / "stat"), key)
    none = str(tmp_path / "none")
    missing = (none, none, none, "inactive_file" if version == 1 else "total_inactive_file")
    monkeypatch.setattr(memory, "CGROUP_FILES", (files, missing) if version == 2 else (missing, files))
    assert memory.free_memory(torch.device("cpu")) == 600_000
