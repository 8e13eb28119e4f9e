"""Diffusion prior: caption (tokens, z_t) -> CLIP image embedding z_i.

diffusers' `PriorTransformer` (the one Karlo uses): a causal transformer over
[caption tokens, z_t, timestep embedding, noised z_i, a final "prd" query token]; the query
token's output is the prediction of the *unnoised* z_i (x0-prediction, MSE loss). z_i is
standardised by the training set's per-dimension mean and std (stored in the model as
`clip_mean`/`clip_std`, applied back by `post_process_latents`). The caption is replaced by ""
10% of the time for classifier-free guidance. Sampling draws several z_i and keeps the one with
the largest dot product with z_t (best-of-N, the paper's N = 2).
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from unclip.conditioning import ConditionedTask
from unclip.weights import check_same_config, load_diffusers_module, save_diffusers


@dataclass
class PriorConfig:
    num_attention_heads: int = 4
    attention_head_dim: int = 64
    num_layers: int = 6
    embedding_dim: int = 384  # width of z_i, z_t and the caption token states
    num_embeddings: int = 32  # caption tokens (padded or truncated to this many)
    dropout: float = 0.0
    text_drop: float = 0.1


class Prior(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        from diffusers import PriorTransformer

        self.config = config
        self.transformer = PriorTransformer(
            num_attention_heads=config.num_attention_heads, attention_head_dim=config.attention_head_dim,
            num_layers=config.num_layers, embedding_dim=config.embedding_dim, num_embeddings=config.num_embeddings,
            additional_embeddings=4, dropout=config.dropout,
        )
        with torch.no_grad():
            self.transformer.clip_std.fill_(1.0)
        self.transformer.clip_mean.requires_grad_(False)  # dataset statistics, not learned
        self.transformer.clip_std.requires_grad_(False)

    @classmethod
    def wrap(cls, transformer) -> "Prior":
        """An existing diffusers PriorTransformer (e.g. Karlo's) as our Prior, weights shared."""
        c = transformer.config
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.config = PriorConfig(num_attention_heads=c.num_attention_heads, attention_head_dim=c.attention_head_dim,
                                  num_layers=c.num_layers, embedding_dim=c.embedding_dim, num_embeddings=c.num_embeddings)
        self.transformer = transformer
        return self.eval()

    def set_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        with torch.no_grad():
            self.transformer.clip_mean.copy_(torch.as_tensor(mean).view(1, -1))
            self.transformer.clip_std.copy_(torch.as_tensor(std).view(1, -1))

    def standardize(self, image_embed: torch.Tensor) -> torch.Tensor:
        return (image_embed - self.transformer.clip_mean) / self.transformer.clip_std

    def unstandardize(self, latents: torch.Tensor) -> torch.Tensor:
        return self.transformer.post_process_latents(latents)

    def forward(self, x_t, t, text_embed, text_hidden, text_mask) -> torch.Tensor:
        """x_t (B,D) standardised, t (B,), z_t (B,D), tokens (B,T,D), mask (B,T) -> predicted x0 (B,D)."""
        return self.transformer(x_t, t, proj_embedding=text_embed, encoder_hidden_states=text_hidden,
                                attention_mask=text_mask).predicted_image_embedding

    @torch.no_grad()
    def sample(self, text, empty, *, steps: int = 25, guidance_scale: float = 4.0, sampler: str = "ddpm",
               generator: torch.Generator | None = None, progress: str | None = None) -> torch.Tensor:
        """One z_i per row of `text` (a TextEncoding; `empty` encodes ""), x0-prediction clipped to ±5σ."""
        from unclip.clip import TextEncoding
        from unclip.sampling import guided, make_scheduler, sample

        n = self.config.num_embeddings
        cond = text.pad_to(n)
        pair = TextEncoding.cat(empty.pad_to(n).repeat(len(text)), cond)

        def denoise_pair(x, t, cond_only=False):
            e = cond if cond_only else pair
            return self(x, t.expand(len(x)), e.text_embed, e.hidden_states, e.mask)

        sched = make_scheduler(sampler, prediction_type="sample", clip_range=5.0)
        x = torch.randn(len(text), self.config.embedding_dim, generator=generator)
        return self.unstandardize(sample(guided(denoise_pair, guidance_scale), x, sched, steps, generator,
                                               desc=progress))

    def save(self, directory: Path, dtype: torch.dtype = torch.float16) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_diffusers(self.transformer, directory / "prior", half=dtype == torch.float16)
        (directory / "prior_config.json").write_text(json.dumps(asdict(self.config), indent=1))

    @classmethod
    def load(cls, directory: Path) -> "Prior":
        cfg = json.loads((Path(directory) / "prior_config.json").read_text())
        model = cls(PriorConfig(**cfg))
        model.load_weights(directory)
        return model.eval()

    def load_weights(self, directory: Path) -> None:
        from diffusers import PriorTransformer

        t = load_diffusers_module(PriorTransformer, Path(directory) / "prior")
        check_same_config(t, self.transformer, Path(directory) / "prior")
        self.transformer.load_state_dict({k: v.float() for k, v in t.state_dict().items()})


class PriorTask(ConditionedTask):
    """Training task for the diffusion prior. Options: clip=DIR (CLIP stage)."""

    def __init__(self, cfg, conditioning=None):
        from unclip.conditioning import Conditioning, clip_dir_for, stage_config
        from unclip.diffusion import Schedule
        from unclip.embed import image_embed_stats

        self.cfg, self.config = cfg, stage_config(cfg, "prior", PriorConfig, "prior_config.json")
        self.model = Prior(self.config)
        clip_dir = clip_dir_for(cfg)
        self.cond = conditioning or Conditioning(cfg.data, "train", clip_dir, max_tokens=self.config.num_embeddings)
        self.clip_dir = self.cond.clip_dir
        self.stats = image_embed_stats(cfg.data, self.clip_dir)
        self.model.set_stats(*self.stats)
        self.schedule = Schedule()
        self._heldout = None

    def batch(self, indices, gens, device) -> dict:
        from unclip.diffusion import draw_noise, draw_timesteps, draw_uniform

        caps = self.cond.pick_captions(indices, gens)
        dropped = draw_uniform(gens) < self.config.text_drop
        t = draw_timesteps(gens, self.schedule.num_timesteps)
        noise = draw_noise(gens, (self.config.embedding_dim,))
        z_t, hidden, mask = self.cond.text(caps, dropped)
        b = {"image_embed": self.cond.image_embeds(indices), "t": t, "noise": noise, "text_embed": z_t,
             "text_hidden": hidden, "text_mask": mask}
        return {k: v.to(device) for k, v in b.items()}

    def loss(self, model: Prior, batch: dict):
        sched = self.schedule.to(batch["t"].device)
        x0 = model.standardize(batch["image_embed"])
        x_t = sched.q_sample(x0, batch["t"], batch["noise"])
        pred = model(x_t, batch["t"], batch["text_embed"], batch["text_hidden"], batch["text_mask"]).float()
        loss = (pred - x0).pow(2).mean()
        with torch.no_grad():
            cos = nn.functional.cosine_similarity(model.unstandardize(pred), batch["image_embed"]).mean()
        return loss, {"cos_z_i": cos}

    def static_shapes(self) -> None:
        """Before torch.compile: nothing to do (captions are already cut or padded to num_embeddings tokens)."""

    def eval_model(self) -> Prior:
        m = Prior(self.config)
        m.set_stats(*self.stats)
        return m

    @torch.no_grad()
    def heldout_loss(self, model: Prior, n: int = 256) -> float:
        if self._heldout is None:
            b = self.cond.heldout().fixed_batch(n)
            g = torch.Generator().manual_seed(1234)
            b["t"] = torch.linspace(0, self.schedule.num_timesteps - 1, len(b["image_embed"])).long()
            b["noise"] = torch.randn(len(b["image_embed"]), self.config.embedding_dim, generator=g)
            self._heldout = b
        model.eval()
        loss, _ = self.loss(model, self._heldout)
        model.train()
        return float(loss)

    def export(self, model: Prior, directory: Path) -> None:
        model.save(directory)

    def load_weights(self, directory: Path) -> None:
        self.model.load_weights(directory)
