"""What this machine has, as the node reports it at registration."""
from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import torch

from protocol.v1 import coordinator_pb2 as pb


def probe(device: str, home: Path) -> pb.Hardware:
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(pb.Gpu(name=props.name, memory_bytes=props.total_memory,
                               compute_capability=f"{props.major}.{props.minor}"))
    home.mkdir(parents=True, exist_ok=True)
    return pb.Hardware(device=device, cpu_count=os.cpu_count() or 1,
                       ram_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), gpus=gpus,
                       disk_free_bytes=shutil.disk_usage(home).free,
                       platform=f"{platform.system()} {platform.machine()} python {platform.python_version()}")


def pick_device(requested: str) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested
