"""Autoregressive prior (the paper's ablation): caption -> discrete code of z_i, token by token.

z_i is reduced by PCA to the k leading components that explain `explained_variance` of the
training set's variance (the paper kept 319 of 1024; emoji embeddings need far fewer), and each
component is quantised into quantile-spaced buckets. A causal transformer (transformers' GPT-2
blocks) reads [caption tokens, z_t, a token for the quantised dot product z_i·z_t] as a prefix and
predicts the k bucket indices in order of decreasing variance. At sampling the dot-product token
is drawn from the top half of its buckets, which steers towards images that match the caption.
"""

import functools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from unclip.conditioning import ConditionedTask
from unclip.weights import load_safetensors, save_safetensors


@functools.cache
def _cache_name() -> str:
    """The KV cache's argument and output name: `cache` in recent transformers 5.x, `past_key_values` before."""
    import inspect

    from transformers import GPT2Model

    return "cache" if "cache" in inspect.signature(GPT2Model.forward).parameters else "past_key_values"


@dataclass
class ARPriorConfig:
    explained_variance: float = 0.99
    max_dims: int = 64
    buckets: int = 128
    dot_buckets: int = 32
    width: int = 256
    layers: int = 6
    heads: int = 4
    num_embeddings: int = 32  # caption tokens
    embed_dim: int = 384  # width of z_i, z_t and the caption token states
    text_drop: float = 0.1


class Quantizer(nn.Module):
    """PCA + per-dimension quantile buckets for z_i, and quantile buckets for z_i·z_t."""

    def __init__(self, embed_dim: int, dims: int, buckets: int, dot_buckets: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(embed_dim))
        self.register_buffer("components", torch.zeros(dims, embed_dim))  # (k, D) rows: principal axes
        self.register_buffer("edges", torch.zeros(dims, buckets - 1))  # (k, B-1) inner bucket edges
        self.register_buffer("centers", torch.zeros(dims, buckets))  # (k, B) value decoded per bucket
        self.register_buffer("dot_edges", torch.zeros(dot_buckets - 1))
        self.register_buffer("dot_centers", torch.zeros(dot_buckets))

    @staticmethod
    def choose_dims(image_embed: torch.Tensor, explained_variance: float, max_dims: int) -> int:
        x = image_embed - image_embed.mean(0)
        s = torch.linalg.svdvals(x.double())
        ratio = (s**2).cumsum(0) / (s**2).sum()
        return min(int((ratio < explained_variance).sum()) + 1, max_dims)

    @torch.no_grad()
    def fit(self, image_embed: torch.Tensor, dots: torch.Tensor) -> "Quantizer":
        k, buckets = self.components.shape[0], self.centers.shape[1]
        self.mean.copy_(image_embed.mean(0))
        _, _, vh = torch.linalg.svd((image_embed - self.mean).double(), full_matrices=False)
        self.components.copy_(vh[:k].float())
        coeffs = (image_embed - self.mean) @ self.components.T  # (N, k)
        q = torch.linspace(0, 1, buckets + 1)[1:-1]
        self.edges.copy_(torch.quantile(coeffs.T.double(), q.double(), dim=1).T.float())
        self.centers.copy_(torch.quantile(coeffs.T.double(), ((torch.arange(buckets) + 0.5) / buckets).double(), dim=1).T.float())
        nd = self.dot_centers.shape[0]
        self.dot_edges.copy_(torch.quantile(dots.double(), torch.linspace(0, 1, nd + 1)[1:-1].double()).float())
        self.dot_centers.copy_(torch.quantile(dots.double(), ((torch.arange(nd) + 0.5) / nd).double()).float())
        return self

    def encode(self, image_embed: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, k) bucket indices."""
        coeffs = (image_embed - self.mean) @ self.components.T  # (N, k)
        return torch.stack([torch.bucketize(coeffs[:, j].contiguous(), self.edges[j]) for j in range(coeffs.shape[1])], 1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, k) bucket indices -> (N, D) unit-norm z_i."""
        coeffs = self.centers.gather(1, codes.T).T  # (N, k)
        return F.normalize(self.mean + coeffs @ self.components, dim=-1)

    def dot_code(self, dots: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(dots.contiguous(), self.dot_edges)


class ARPrior(nn.Module):
    def __init__(self, config: ARPriorConfig, dims: int):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        self.config, self.dims = config, dims
        self.quantizer = Quantizer(config.embed_dim, dims, config.buckets, config.dot_buckets)
        w = config.width
        self.text_in = nn.Linear(config.embed_dim, w)  # caption token states
        self.text_embed_in = nn.Linear(config.embed_dim, w)  # z_t
        self.dot_embedding = nn.Embedding(config.dot_buckets, w)
        self.code_embedding = nn.Embedding(config.buckets, w)
        self.gpt = GPT2Model(GPT2Config(n_embd=w, n_layer=config.layers, n_head=config.heads, vocab_size=1,
                                        n_positions=config.num_embeddings + 2 + dims, resid_pdrop=0.0,
                                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0))
        self.head = nn.Linear(w, config.buckets)
        self._init_like_gpt2()

    def _init_like_gpt2(self) -> None:
        """Our input and output layers as GPT-2 initialises its own (normal, std initializer_range = 0.02; zero
        bias). PyTorch's default N(0, 1) embeddings put the previous code's embedding in the residual stream
        ~50x above what the 0.02-scaled blocks add, so the caption barely reached the logits: trained so, the
        prior's held-out cross-entropy stayed within 0.02 nats of uniform over 1,251 steps."""
        std = self.gpt.config.initializer_range
        for m in (self.text_in, self.text_embed_in, self.dot_embedding, self.code_embedding, self.head):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def prefix(self, text_hidden, text_mask, text_embed, dot_codes):
        """-> embeddings (B, T+2, w) and mask (B, T+2) of [caption tokens, z_t, dot token]."""
        e = torch.cat([self.text_in(text_hidden), self.text_embed_in(text_embed)[:, None], self.dot_embedding(dot_codes)[:, None]], 1)
        m = torch.cat([text_mask, torch.ones(len(text_mask), 2, dtype=torch.bool, device=text_mask.device)], 1)
        return e, m

    def forward(self, text_hidden, text_mask, text_embed, dot_codes, codes) -> torch.Tensor:
        """Teacher-forced logits (B, k, buckets) for codes (B, k)."""
        e, m = self.prefix(text_hidden, text_mask, text_embed, dot_codes)
        x = torch.cat([e, self.code_embedding(codes[:, :-1])], 1)  # (B, T+2+k-1, w)
        mask = torch.cat([m, torch.ones(len(m), codes.shape[1] - 1, dtype=torch.bool, device=m.device)], 1)
        h = self.gpt(inputs_embeds=x, attention_mask=mask.long()).last_hidden_state
        return self.head(h[:, e.shape[1] - 1:])  # the dot token predicts code 0, code j predicts code j+1

    @torch.no_grad()
    def generate(self, text_hidden, text_mask, text_embed, generator=None, temperature: float = 1.0,
                 guidance_scale: float = 1.0, uncond=None, progress: str | None = None) -> torch.Tensor:
        """Sample z_i (B, D); the dot-product token is drawn uniformly from the top half of its buckets.

        guidance_scale != 1: classifier-free guidance on the logits of every code (the paper guides both
        priors; this one was trained with the caption dropped at `text_drop`), logits_u + s·(logits_c −
        logits_u), where `uncond` = (hidden (B|1, T, E), mask (B|1, T), z_t (B|1, E)) encodes the empty
        caption as in training; both halves share the dot token and the codes drawn."""
        b, nd = len(text_embed), self.config.dot_buckets
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale}")
        guided = guidance_scale != 1.0
        dot = torch.randint(nd // 2, nd, (b,), generator=generator, device=text_embed.device)
        if guided:
            if uncond is None:
                raise ValueError("guidance_scale != 1 needs uncond: the empty caption's (hidden, mask, z_t)")
            hu, mu, eu = (u.expand(b, *u.shape[1:]) for u in uncond)
            if hu.shape[1] != text_hidden.shape[1]:
                raise ValueError(f"uncond has {hu.shape[1]} caption tokens, the captions {text_hidden.shape[1]}: pad both "
                                 "to the same length")
            text_hidden, text_mask = torch.cat([text_hidden, hu]), torch.cat([text_mask, mu])
            text_embed, dot = torch.cat([text_embed, eu]), torch.cat([dot, dot])
        e, m = self.prefix(text_hidden, text_mask, text_embed, dot)
        codes, past, x, mask = [], None, e, m.long()
        from tqdm.auto import tqdm

        from unclip.sampling import report_step

        cache = _cache_name()
        for j in tqdm(range(self.dims), desc=progress, disable=progress is None, leave=False):
            report_step(progress, j, self.dims)
            out = self.gpt(inputs_embeds=x, attention_mask=mask, use_cache=True, **{cache: past})
            past = out[cache]
            logits = self.head(out.last_hidden_state[:, -1]).float()  # (B or 2B, buckets)
            if guided:
                cond, free = logits.chunk(2)
                logits = free + guidance_scale * (cond - free)
            c = torch.multinomial(F.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]  # (B,)
            codes.append(c)
            x = self.code_embedding(torch.cat([c, c]) if guided else c)[:, None]
            mask = torch.cat([mask, torch.ones(len(mask), 1, dtype=mask.dtype, device=mask.device)], 1)
        return self.quantizer.decode(torch.stack(codes, 1))

    def save(self, directory: Path, dtype: torch.dtype = torch.float16) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keep32 = ("quantizer.",)  # PCA and bucket values stay exact
        sd = {k: (v if k.startswith(keep32) else v.to(dtype)) for k, v in self.state_dict().items()}
        save_safetensors(sd, directory / "ar_prior.safetensors")
        (directory / "ar_prior_config.json").write_text(json.dumps({**asdict(self.config), "dims": self.dims}, indent=1))

    @classmethod
    def load(cls, directory: Path) -> "ARPrior":
        cfg = json.loads((Path(directory) / "ar_prior_config.json").read_text())
        dims = cfg.pop("dims")
        model = cls(ARPriorConfig(**cfg), dims)
        model.load_state_dict({k: v.float() for k, v in load_safetensors(Path(directory) / "ar_prior.safetensors").items()})
        return model.eval()


class ARPriorTask(ConditionedTask):
    """Training task for the AR prior. Options: clip=DIR (CLIP stage)."""

    def __init__(self, cfg, conditioning=None):
        import numpy as np

        from unclip.conditioning import Conditioning, clip_dir_for
        from unclip.presets import load_preset

        self.cfg, self.config = cfg, ARPriorConfig(**load_preset("ar_prior", cfg.preset))
        clip_dir = clip_dir_for(cfg)
        self.cond = conditioning or Conditioning(cfg.data, "train", clip_dir, max_tokens=self.config.num_embeddings)
        self.clip_dir = self.cond.clip_dir
        z = self._image_embeds()
        first = torch.from_numpy(np.asarray(self.cond.text_embed[self.cond.offsets[:-1]], dtype=np.float32))
        dims = Quantizer.choose_dims(z, self.config.explained_variance, self.config.max_dims)
        self.model = ARPrior(self.config, dims)
        self.model.quantizer.fit(z, (z * first).sum(1))
        self.codes = self.model.quantizer.encode(z)  # (N, k)
        self._heldout = None

    def batch(self, indices, gens, device) -> dict:
        from unclip.diffusion import draw_uniform

        caps = self.cond.pick_captions(indices, gens)
        dropped = draw_uniform(gens) < self.config.text_drop
        z_t, hidden, mask = self.cond.text(caps, dropped)
        z_i = self.cond.image_embeds(indices)
        dot = self.model.quantizer.dot_code((z_i * z_t).sum(1))
        b = {"text_hidden": hidden, "text_mask": mask, "text_embed": z_t, "dot": dot, "codes": self.codes[indices]}
        return {k: v.to(device) for k, v in b.items()}

    @staticmethod
    def loss(model: ARPrior, batch: dict):
        logits = model(batch["text_hidden"], batch["text_mask"], batch["text_embed"], batch["dot"], batch["codes"])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["codes"].flatten())
        acc = (logits.argmax(-1) == batch["codes"]).float().mean()
        return loss, {"token_acc": acc.detach()}

    def static_shapes(self) -> None:
        """Before torch.compile: nothing to do (captions are already cut or padded to num_embeddings tokens)."""

    def eval_model(self) -> ARPrior:
        m = ARPrior(self.config, self.model.dims)
        m.quantizer.load_state_dict(self.model.quantizer.state_dict())
        return m

    @torch.no_grad()
    def heldout_loss(self, model: ARPrior, n: int = 256) -> float:
        if self._heldout is None:
            b = self.cond.heldout().fixed_batch(n)
            q = self.model.quantizer
            b["dot"] = q.dot_code((b["image_embed"] * b["text_embed"]).sum(1))
            b["codes"] = q.encode(b.pop("image_embed"))
            self._heldout = b
        model.eval()
        loss, _ = self.loss(model, self._heldout)
        model.train()
        return float(loss)

    def export(self, model: ARPrior, directory: Path) -> None:
        model.save(directory)

    def _image_embeds(self) -> torch.Tensor:
        import numpy as np

        return torch.from_numpy(np.asarray(self.cond.image_embed, dtype=np.float32))  # (N, D)

    def load_weights(self, directory: Path) -> None:
        """The model's weights and its quantizer (PCA and buckets): the training codes are re-encoded with the
        loaded quantizer, which the model was trained to predict (the one fit here may differ on other data)."""
        self.model.load_state_dict(ARPrior.load(directory).state_dict())
        self.codes = self.model.quantizer.encode(self._image_embeds())
