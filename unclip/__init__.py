"""unCLIP: hierarchical text-conditional image generation with CLIP latents.

Imports are lazy so that `unclip --help` and the data tools start without loading torch.
"""

__version__ = "0.1.0"
