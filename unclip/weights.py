"""Weights on disk: safetensors only, never pickle; clear errors for anything else."""

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from unclip.fsutil import atomic_path

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


def load_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path} is a pickle-based checkpoint, which can run arbitrary code when loaded; unclip reads only "
            "safetensors. Convert it once, in a trusted environment, by loading it with torch (weights_only=True) "
            "and writing the state dict with safetensors.torch.save_file"
        )
    if not path.exists():
        raise FileNotFoundError(f"missing weights file {path}")
    return load_file(path, device=device)


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Atomic write: the file appears complete under its name or not at all."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_diffusers(module, directory: Path, half: bool = True) -> None:
    """`save_pretrained` (config.json + safetensors) of a copy in fp16; the live module is untouched."""
    import copy

    out = copy.deepcopy(module)
    (out.half() if half else out.float()).save_pretrained(Path(directory), safe_serialization=True)
