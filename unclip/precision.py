"""Reduced-precision inference: autocast around each denoiser's forward.

The UNets' convolutions already run at this CPU's fp32 peak (the decoder's 3x3 convs at 385-423
GFLOPS against a 370 GFLOPS fp32 matmul peak, measured), so fp32 time is bounded by arithmetic. With
bf16 autocast the convolutions and matmuls run on the CPU's bf16 units (AMX here: 2.4 TFLOPS) and a
whole `generate` takes ~0.56x the time (measured). Weights stay fp32 (autocast casts per op and keeps
reductions such as group norm and softmax in fp32), and each denoiser's output comes back as fp32,
so the samplers' arithmetic is unchanged. Images move by about 1% of the range on average: close,
not bit-identical, which is why fp32 stays the default. On a CPU without native bf16, bf16 is slower.
"""

import types

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: str = "cpu") -> bool:
    """Whether bf16 runs on units of its own here: any CUDA GPU, or a CPU with AMX tiles. Elsewhere
    (AVX512-BF16 alone included) oneDNN's bf16 convolutions and matmuls were slower than fp32
    (measured on such a CPU: matmul 0.58x, 3x3 conv 0.67x the fp32 speed)."""
    if device != "cpu":
        return True
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private; absent: assume not native
    return bool(probe and probe())


def check_precision(precision: str) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def _autocast(method: str):
    def run(self, *args, **kwargs):
        device = next(self.parameters()).device.type
        with torch.autocast(device, dtype=self._autocast_dtype):
            out = getattr(type(self), method)(self, *args, **kwargs)
        return out.float()

    return run


def autocast_forward(module: torch.nn.Module, precision: str, method: str = "forward") -> None:
    """Bind (fp32: unbind) a `method` (default: forward) that runs `module` under autocast at
    `precision` and returns its tensor in fp32."""
    dtype = check_precision(precision)
    if dtype is None:
        module.__dict__.pop(method, None)
        module.__dict__.pop("_autocast_dtype", None)
        return
    module._autocast_dtype = dtype
    setattr(module, method, types.MethodType(_autocast(method), module))
