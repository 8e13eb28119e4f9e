"""Training and evaluating the CLIP stage: batches, contrastive loss, zero-shot concept retrieval."""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unclip.clip import CLIPConfig, LockedTextCLIP, TextTower
from unclip.embed import image_pack, text_features
from unclip.presets import load_preset


def uint8_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def random_crop_resize(x: torch.Tensor, gens: list[torch.Generator], min_scale: float = 0.8) -> torch.Tensor:
    """Per-sample zoom-in crops (scale in [min_scale, 1], random offset), resampled to the same size."""
    theta = torch.zeros(len(x), 2, 3)
    for i, g in enumerate(gens):
        s, tx, ty = torch.rand(3, generator=g).tolist()
        s = min_scale + (1 - min_scale) * s
        theta[i, 0, 0] = theta[i, 1, 1] = s
        theta[i, 0, 2], theta[i, 1, 2] = (2 * tx - 1) * (1 - s), (2 * ty - 1) * (1 - s)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class CLIPTask:
    """Options: min_scale (crop augmentation, default 0.8); subset (train on this seeded fraction
    of the train split, default 1: the judge trains on its own subset)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.config = CLIPConfig(**load_preset("clip", cfg.preset))
        self.tower = TextTower()
        self.model = LockedTextCLIP(self.config, self.tower)
        self.images, self.index = image_pack(cfg.data, "train")
        self.offsets = np.asarray(self.index["caption_offsets"])
        self.pooled = text_features(cfg.data, "train", self.tower)["pooled"]
        self.min_scale = float(cfg.options.get("min_scale", 0.8))
        frac = float(cfg.options.get("subset", 1.0))
        if not 0 < frac <= 1:
            raise ValueError(f"subset must be in (0, 1], got {frac}")
        perm = np.random.default_rng(cfg.seed).permutation(len(self.images))
        self.subset = np.sort(perm[: max(int(frac * len(perm)), 1)]) if frac < 1 else np.arange(len(self.images))
        self._heldout = None

    def __len__(self) -> int:
        return len(self.subset)

    def batch(self, indices: list[int], gens: list[torch.Generator], device) -> dict:
        indices = [int(self.subset[i]) for i in indices]
        caps = [int(self.offsets[i] + torch.randint(self.offsets[i + 1] - self.offsets[i], (1,), generator=g))
                for i, g in zip(indices, gens)]
        x = uint8_to_tensor(np.stack([self.images[i] for i in indices]))  # (B, 3, H, W)
        x = random_crop_resize(x, gens, self.min_scale) if self.min_scale < 1 else x
        return {"images": x.to(device), "pooled": torch.from_numpy(self.pooled[caps].astype(np.float32)).to(device)}

    @staticmethod
    def loss(model: LockedTextCLIP, batch: dict):
        image_embed = model.encode_image(batch["images"])  # (B, D)
        text_embed = model.project_text(batch["pooled"])  # (B, D)
        loss = model.contrastive_loss(image_embed, text_embed)
        with torch.no_grad():
            acc = (image_embed @ text_embed.T).argmax(1).eq(torch.arange(len(image_embed), device=image_embed.device))
        return loss, {"acc": acc.float().mean(), "temperature": 1 / model.logit_scale.exp().detach()}

    def eval_model(self) -> LockedTextCLIP:
        return LockedTextCLIP(self.config, self.tower)

    @torch.no_grad()
    def heldout_loss(self, model: LockedTextCLIP, batch_size: int = 256) -> float:
        """Contrastive loss on held-out images with their canonical captions, in fixed batches."""
        if self._heldout is None:
            images, index = image_pack(self.cfg.data, "heldout_images")
            pooled = text_features(self.cfg.data, "heldout_images", self.tower)["pooled"]
            first = np.asarray(index["caption_offsets"][:-1])
            self._heldout = (uint8_to_tensor(np.asarray(images)), torch.from_numpy(pooled[first].astype(np.float32)))
        x, p = self._heldout
        model.eval()
        losses = []
        for b in range(0, len(x), batch_size):
            if len(x[b:b + batch_size]) < 2:
                continue
            losses.append(float(model.contrastive_loss(model.encode_image(x[b:b + batch_size]), model.project_text(p[b:b + batch_size]))))
        model.train()
        return float(np.mean(losses)) if losses else math.nan

    def export(self, model: LockedTextCLIP, directory: Path) -> None:
        model.save(directory)

    def load_weights(self, directory: Path) -> None:
        self.model.load_state_dict(LockedTextCLIP.load(directory, self.tower).state_dict())


@torch.no_grad()
def concept_retrieval(model, data: Path, split: str, batch_size: int = 256) -> dict:
    """Zero-shot concept retrieval: each image's nearest concept name among *all* concepts.

    Candidates are the bare concept labels ("grinning cat") of every split, so held-out concepts
    compete with every seen one. Returns top-1/top-5 accuracy and the number of candidates.
    """
    labels: dict[str, str] = {}
    for s in ("train", "heldout_images", "heldout_concepts"):
        _, idx = image_pack(data, s)
        labels.update(zip(idx["concepts"], idx["concept_labels"]))
    concepts = sorted(labels)
    text_embed = torch.cat([model.encode_text([labels[c] for c in concepts[b:b + batch_size]]).text_embed
                            for b in range(0, len(concepts), batch_size)])  # (K, D)
    images, idx = image_pack(data, split)
    target = torch.tensor([concepts.index(c) for c in idx["concepts"]])
    hits1 = hits5 = 0
    model.eval()
    for b in range(0, len(images), batch_size):
        z = model.encode_image(uint8_to_tensor(np.asarray(images[b:b + batch_size])))  # (B, D)
        top = (z @ text_embed.T).topk(5, dim=1).indices  # (B, 5)
        t = target[b:b + batch_size, None]
        hits1 += int((top[:, :1] == t).any(1).sum())
        hits5 += int((top == t).any(1).sum())
    n = max(len(images), 1)
    return {"split": split, "images": len(images), "candidates": len(concepts), "top1": hits1 / n, "top5": hits5 / n}
