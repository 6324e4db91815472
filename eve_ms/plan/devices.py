"""Accelerator specs for `eve-ms plan`, read from `devices.yaml` beside this file (figures and sources there)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import yaml

from eve_ms.config import ConfigError

DEVICES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "devices.yaml")
GB = 1e9


@dataclass(frozen=True)
class DeviceSpec:
    key: str
    name: str
    memory_gb: float
    usable_gb: float
    hbm_gbps: float
    peak_tflops: dict = field(default_factory=dict)
    intra_node_gbps: float = 0.0
    inter_node_gbps: float = 0.0
    devices_per_node: int = 8
    source: str = ""
    verified: bool = False

    @property
    def usable_bytes(self) -> float:
        return self.usable_gb * GB

    @property
    def reserve_bytes(self) -> float:
        """Memory the framework, driver and collectives' buffers keep (physical minus usable)."""
        return (self.memory_gb - self.usable_gb) * GB

    def compute_dtype(self, wanted: str) -> str:
        """`wanted` if the device computes in it, else float16 for a bfloat16 request (V100), else an error."""
        if wanted in self.peak_tflops:
            return wanted
        if wanted == "bfloat16" and "float16" in self.peak_tflops:
            return "float16"
        raise ConfigError(f"device {self.key} has no {wanted} peak in {DEVICES_FILE}")

    def peak_flops(self, dtype: str) -> float:
        return float(self.peak_tflops[self.compute_dtype(dtype)]) * 1e12

    def link_bytes_per_s(self, num_devices: int) -> float:
        """Per-device ring bandwidth: the slowest link a ring over `num_devices` crosses."""
        if num_devices <= self.devices_per_node:
            return self.intra_node_gbps * GB
        return self.inter_node_gbps * GB


def load_devices(path: Optional[str] = None) -> tuple[dict, dict]:
    """(key -> DeviceSpec, alias -> key) from the devices file."""
    path = path or DEVICES_FILE
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    devices = {key: DeviceSpec(key=key, **spec) for key, spec in raw["devices"].items()}
    aliases = dict(raw.get("aliases") or {})
    return devices, aliases


def get_device(key: str, path: Optional[str] = None) -> DeviceSpec:
    devices, aliases = load_devices(path)
    resolved = aliases.get(key, key)
    if resolved not in devices:
        raise ConfigError(f"unknown device {key!r}; known: {', '.join(sorted(devices) + sorted(aliases))}")
    return devices[resolved]
