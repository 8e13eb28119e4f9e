"""FSDP2 (`fully_shard`) for the large presets: each block's parameters, gradients and optimizer
state live sharded across processes; full tensors are gathered only to save and evaluate."""

import torch
import torch.nn as nn

# blocks sharded one by one (every stage's repeated unit), then the root module
BLOCK_SUFFIXES = ("Block", "Block2D", "Layer", "ResnetBlock2D", "BasicTransformerBlock")


def shard(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    blocks = [m for m in model.modules() if m is not model and type(m).__name__.endswith(BLOCK_SUFFIXES)
              and any(True for _ in m.parameters())]
    outermost = [m for m in blocks if not any(m is not o and _contains(o, m) for o in blocks)]
    for m in outermost:
        fully_shard(m)
    fully_shard(model)
    return model


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


def is_sharded(t) -> bool:
    return type(t).__name__ == "DTensor"


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a shard (a collective: every process must call it)."""
    return t.full_tensor() if is_sharded(t) else t


def full_state(state: dict) -> dict:
    return {k: full(v) for k, v in state.items()}


def shard_like(tensor: torch.Tensor, reference) -> torch.Tensor:
    """Cut a full tensor the way `reference` (a DTensor) is sharded; other tensors pass through."""
    if not is_sharded(reference):
        return tensor
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(tensor.to(reference.dtype), reference.device_mesh, reference.placements)
