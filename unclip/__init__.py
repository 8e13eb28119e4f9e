"""unCLIP: hierarchical text-conditional image generation with CLIP latents.

Imports are lazy so that `unclip --help` and the data tools start without loading torch.
"""

__version__ = "0.1.0"


def load(path=None):
    """`pipe = unclip.load(path)`: a model directory (default: the shipped model) as a pipeline."""
    from unclip.pipeline import load as _load

    return _load(path)
