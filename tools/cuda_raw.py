"""The CUDA allocation kernel called on PyTorch CUDA tensors, without MindSpore.

MindSpore releases after 2.3 ship no GPU backend (the pinned 2.9.0 has none), so `ops.Custom` cannot
run eve_ms/ops/kernels/allocation_cuda.cu. This module loads the same library (built by
`eve_ms.ops.kernels.build`) and calls its raw entry points, `EveAllocationCudaRawWorkspaceBytes` and
`EveAllocationCudaRaw`, through ctypes with torch tensors' device pointers and torch's current CUDA
stream. `tools/parity.py --device_target GPU` uses it; the eve_ms package never imports torch.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from eve_ms.ops.token_allocation import STRATEGY_CODES


class CudaRawAllocation:
    """`allocation(probs, is_image, valid, noise, capacity, strategy, beta, ratio) -> (expert, slot, counts)`.

    Inputs are numpy arrays (or tensors); they are copied to `device`, the kernel runs on torch's
    current stream there, and the outputs come back as numpy int32 arrays.
    """

    def __init__(self, library: str | os.PathLike, device: str = "cuda"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.lib = ctypes.CDLL(str(library))
        self.lib.EveAllocationCudaRawWorkspaceBytes.argtypes = [ctypes.c_int64]
        self.lib.EveAllocationCudaRawWorkspaceBytes.restype = ctypes.c_size_t
        self.lib.EveAllocationCudaRaw.argtypes = [
            ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,  # T, inputs
            ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_float,  # capacity, strategy, beta, W
            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,  # expert, slot, counts
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]  # workspace, its bytes, stream
        self.lib.EveAllocationCudaRaw.restype = ctypes.c_int

    def _on_device(self, array, dtype):
        return self.torch.as_tensor(np.ascontiguousarray(array), dtype=dtype).to(self.device).contiguous()

    def __call__(self, probs, is_image, valid, noise, capacity: int, strategy: str, beta: float = 1.0,
                 ratio: float = 0.5):
        torch = self.torch
        probs = self._on_device(np.asarray(probs, np.float32), torch.float32)
        is_image = self._on_device(np.asarray(is_image, bool), torch.bool)
        valid = self._on_device(np.asarray(valid, bool), torch.bool)
        noise = self._on_device(np.asarray(noise, np.float32), torch.float32)
        num_tokens = probs.shape[0]
        if probs.shape != (num_tokens, 2) or not (is_image.shape == valid.shape == noise.shape == (num_tokens,)):
            raise ValueError(f"shapes: probs {tuple(probs.shape)}, masks/noise {tuple(is_image.shape)}, "
                             f"{tuple(valid.shape)}, {tuple(noise.shape)}; expected [T, 2] and [T]")
        workspace_bytes = self.lib.EveAllocationCudaRawWorkspaceBytes(num_tokens)
        if workspace_bytes == 0:
            raise RuntimeError(f"EveAllocationCudaRawWorkspaceBytes({num_tokens}) failed (T out of range or CUB)")
        workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=self.device)
        expert = torch.empty(num_tokens, dtype=torch.int32, device=self.device)
        slot = torch.empty(num_tokens, dtype=torch.int32, device=self.device)
        counts = torch.empty(4, dtype=torch.int32, device=self.device)
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        code = self.lib.EveAllocationCudaRaw(
            num_tokens, probs.data_ptr(), is_image.data_ptr(), valid.data_ptr(), noise.data_ptr(), int(capacity),
            STRATEGY_CODES[strategy], float(beta), float(ratio), expert.data_ptr(), slot.data_ptr(),
            counts.data_ptr(), workspace.data_ptr(), workspace_bytes, stream)
        if code != 0:
            raise RuntimeError(f"EveAllocationCudaRaw returned {code} (see its message on stderr)")
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        return expert.cpu().numpy(), slot.cpu().numpy(), counts.cpu().numpy()
