"""How pseudo-gradients travel between trainers: hivemind's fp16 or 8-bit compression, or none.

hivemind 1.1.12's 8-bit extract calls int() on a one-element numpy array, which numpy 2 refuses;
the registered deserializer is replaced by one that reads the codebook length as a scalar. The
bytes on the wire are hivemind's own, so peers with an unpatched hivemind read them the same.
"""
from __future__ import annotations

import numpy as np
import torch
from hivemind.compression import Float16Compression, NoCompression, Uniform8BitQuantization
from hivemind.compression import serialization
from hivemind.proto import runtime_pb2


class _Uniform8Bit(Uniform8BitQuantization):
    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        codebook_size = int(np.frombuffer(serialized_tensor.buffer, count=1, dtype=np.int64)[0])
        codebook = np.frombuffer(serialized_tensor.buffer, offset=8, count=codebook_size, dtype=self.codebook_dtype)
        quantized = np.frombuffer(serialized_tensor.buffer, offset=8 + codebook.nbytes, dtype=self.indices_dtype)
        quantized = torch.as_tensor(quantized, dtype=torch.int64).reshape(tuple(serialized_tensor.size))
        codebook = torch.as_tensor(codebook).to(dtype=getattr(torch, serialized_tensor.dtype))
        return codebook[quantized].requires_grad_(serialized_tensor.requires_grad)


serialization._BASE_COMPRESSION_TYPES["UNIFORM_8BIT"] = _Uniform8Bit()
COMPRESSIONS = {"none": NoCompression, "fp16": Float16Compression, "int8": _Uniform8Bit}


def compression(name: str):
    return COMPRESSIONS[name]()
