"""Precomputed conditioning for the prior and decoder tasks: z_i, z_t, caption token states.

Reads what `unclip embed` wrote (see embed.py) for one split and one CLIP stage, picks a caption
per sample from its generator, applies caption dropout by substituting the encoding of "" (the
unconditional caption, as in Karlo/diffusers), and pads token states into a batch.
"""

from pathlib import Path

import numpy as np
import torch

from unclip.embed import clip_embeddings, image_pack, text_features
from unclip.paths import runs_dir


def default_clip_dir() -> Path:
    """The CLIP stage used when a task is not told otherwise: the shipped model, else the CLIP run."""
    from unclip.models import default_model_dir

    shipped = default_model_dir()
    if shipped is not None and (shipped / "clip.safetensors").exists():
        return shipped
    return runs_dir() / "clip-small" / "model"


def clip_dir_for(cfg) -> Path:
    """The CLIP stage a conditioned task embeds its data with: --option clip=DIR, else that of the
    model it starts from (--init-from, when it has one: a fine-tune keeps its model's CLIP), else
    the default."""
    if cfg.options.get("clip"):
        return Path(cfg.options["clip"])
    if cfg.init_from and (Path(cfg.init_from) / "clip.safetensors").exists():
        return Path(cfg.init_from)
    return default_clip_dir()


def stage_config(cfg, stage: str, config_cls, filename: str):
    """A stage's architecture: that of the model it starts from (--init-from with FILENAME: a
    fine-tune keeps its model's shape), else the preset's."""
    import json

    from unclip.presets import load_preset

    if cfg.init_from and (Path(cfg.init_from) / filename).exists():
        return config_cls(**json.loads((Path(cfg.init_from) / filename).read_text()))
    return config_cls(**load_preset(stage, cfg.preset))


def load_clip_dir(path: Path):
    from unclip.clip import LockedTextCLIP

    path = Path(path).expanduser()
    if not (path / "clip.safetensors").exists():
        raise FileNotFoundError(f"no trained CLIP stage at {path}: train it first (`unclip train clip`) "
                                "or pass --option clip=DIR")
    return LockedTextCLIP.load(path)


class Conditioning:
    def __init__(self, data: Path, split: str, clip_dir: Path, clip=None, max_tokens: int | None = None):
        self.data, self.split = data, split
        self.clip_dir = Path(clip_dir).expanduser()
        self.clip = clip or load_clip_dir(self.clip_dir)
        self.images, self.index = image_pack(data, split)
        self.offsets = np.asarray(self.index["caption_offsets"])
        text = text_features(data, split, self.clip.text_tower)
        self.tokens, self.token_offsets = text["tokens"], np.asarray(text["offsets"])
        emb = clip_embeddings(data, split, self.clip, self.clip_dir)
        self.image_embed, self.text_embed = emb["image_embed"], emb["text_embed"]
        self.max_tokens = max_tokens
        self.pad_to: int | None = None  # pad every batch's tokens to this width (static shapes to compile)
        enc = self.clip.encode_text([""])  # the unconditional caption
        self.empty_text_embed = enc.text_embed[0].detach().float()  # (D,)
        self.empty_tokens = enc.hidden_states[0][enc.mask[0]].float()  # (T0, W)

    def __len__(self) -> int:
        return len(self.images)

    def fingerprint(self) -> str:
        """Identifies the inputs a conditioned stage trains on: the CLIP stage's weights."""
        from unclip.embed import weights_hash

        return f"clip-{weights_hash(self.clip_dir / 'clip.safetensors')}"

    def pick_captions(self, indices: list[int], gens: list[torch.Generator]) -> list[int]:
        """One caption id per sample, uniformly among its captions."""
        return [int(self.offsets[i] + torch.randint(int(self.offsets[i + 1] - self.offsets[i]), (), generator=g))
                for i, g in zip(indices, gens)]

    def text(self, caption_ids: list[int], dropped: torch.Tensor | None = None):
        """-> z_t (B, D), tokens (B, T, W) zero-padded, mask (B, T) bool; dropped rows get the "" encoding."""
        dropped = dropped if dropped is not None else torch.zeros(len(caption_ids), dtype=torch.bool)
        z_t, toks = [], []
        for c, d in zip(caption_ids, dropped.tolist()):
            if d:
                z_t.append(self.empty_text_embed)
                toks.append(self.empty_tokens)
            else:
                z_t.append(torch.from_numpy(self.text_embed[c].astype(np.float32)))
                toks.append(torch.from_numpy(self.tokens[self.token_offsets[c]:self.token_offsets[c + 1]].astype(np.float32)))
        if self.max_tokens:
            toks = [t[: self.max_tokens] for t in toks]
        width = self.max_tokens or self.pad_to or max(len(t) for t in toks)
        hidden = torch.zeros(len(toks), width, toks[0].shape[-1])
        mask = torch.zeros(len(toks), width, dtype=torch.bool)
        for i, t in enumerate(toks):
            hidden[i, :len(t)] = t
            mask[i, :len(t)] = True
        return torch.stack(z_t), hidden, mask

    def longest(self) -> int:
        """Tokens of the split's longest caption (or of "", if longer)."""
        return int(max(np.diff(self.token_offsets).max(initial=0), len(self.empty_tokens)))

    def image_embeds(self, indices: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.image_embed[i] for i in indices]).astype(np.float32))  # (B, D)

    def pixels(self, indices: list[int], size: int) -> torch.Tensor:
        """(B, 3, size, size) in [-1, 1]."""
        x = torch.from_numpy(np.stack([self.images[i] for i in indices])).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "bicubic")
        return x


    def fixed_batch(self, n: int, size: int | None = None) -> dict:
        """n images (the first, repeated in order when there are fewer) with their canonical (first)
        captions, no dropout: for held-out losses, whose timesteps then still span the schedule."""
        if not len(self):
            raise ValueError(f"no images in the {self.split} split of {self.data}")
        idx = [i % len(self) for i in range(n)]
        z_t, hidden, mask = self.text([int(self.offsets[i]) for i in idx])
        b = {"image_embed": self.image_embeds(idx), "text_embed": z_t, "text_hidden": hidden, "text_mask": mask}
        if size:
            b["x0"] = self.pixels(idx, size)
        return b

    def heldout(self, split: str = "heldout_images") -> "Conditioning":
        """The same conditioning (same CLIP, token limit) for another split of the same dataset."""
        return Conditioning(self.data, split, self.clip_dir, clip=self.clip, max_tokens=self.max_tokens)


class ConditionedTask:
    """What the tasks trained on precomputed CLIP conditioning share (prior, AR prior, decoder)."""

    cond: Conditioning

    def __len__(self) -> int:
        return len(self.cond)

    def fingerprint(self) -> str:
        return self.cond.fingerprint()
