"""Text -> image with the whole unCLIP cascade: CLIP text encoding -> prior -> decoder -> upsampler.

`pipe = unclip.load(path)`; `out = pipe("a grinning cat, 3D style", num_images_per_prompt=4)`.
The loop of each stage is explicit and readable, in the diffusers style; the text is encoded once
per call (with the unconditional "" alongside) and reused by every step of every stage.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unclip.sampling import SAMPLERS, guided, make_scheduler, sample


@dataclass
class UnCLIPOutput:
    images: list  # PIL images, or an array / tensor per output_type
    image_embeds: torch.Tensor  # (N, D) the z_i each image was decoded from


@dataclass
class PromptEncoding:
    text_embed: torch.Tensor  # (B, D)
    hidden: torch.Tensor  # (B, T, W)
    mask: torch.Tensor  # (B, T)

    def repeat(self, n: int) -> "PromptEncoding":
        return PromptEncoding(*(v.repeat_interleave(n, 0) for v in (self.text_embed, self.hidden, self.mask)))

    def pad_to(self, length: int) -> "PromptEncoding":
        h = torch.zeros(len(self.hidden), length, self.hidden.shape[-1], dtype=self.hidden.dtype)
        m = torch.zeros(len(self.mask), length, dtype=torch.bool)
        n = min(length, self.hidden.shape[1])
        h[:, :n], m[:, :n] = self.hidden[:, :n], self.mask[:, :n]
        return PromptEncoding(self.text_embed, h, m)


def _cat(a: PromptEncoding, b: PromptEncoding) -> PromptEncoding:
    length = max(a.hidden.shape[1], b.hidden.shape[1])
    a, b = a.pad_to(length), b.pad_to(length)
    return PromptEncoding(*(torch.cat([x, y]) for x, y in ((a.text_embed, b.text_embed), (a.hidden, b.hidden), (a.mask, b.mask))))


class UnCLIPPipeline:
    def __init__(self, clip, prior=None, decoder=None, upsampler=None, ar_prior=None, name: str = "unclip"):
        self.clip, self.prior, self.decoder, self.upsampler, self.ar_prior = clip, prior, decoder, upsampler, ar_prior
        self.name = name

    @classmethod
    def from_pretrained(cls, path: Path) -> "UnCLIPPipeline":
        """A model directory: clip + prior + decoder (+ super_res_first, + ar_prior when present)."""
        from unclip.clip import load_clip

        path = Path(path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"no model directory at {path}")
        parts = {"clip": load_clip(path)}
        if (path / "prior_config.json").exists():
            from unclip.prior import Prior

            parts["prior"] = Prior.load(path)
        if (path / "decoder_config.json").exists():
            from unclip.decoder import Decoder

            parts["decoder"] = Decoder.load(path)
        if (path / "super_res_first_config.json").exists():
            from unclip.upsampler import Upsampler

            parts["upsampler"] = Upsampler.load(path)
        if (path / "ar_prior_config.json").exists():
            from unclip.ar_prior import ARPrior

            parts["ar_prior"] = ARPrior.load(path)
        return cls(**parts, name=path.name)

    # -- text ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[PromptEncoding, PromptEncoding]:
        """Encodings of the prompts and of "" (the unconditional caption), computed once per call."""
        enc = self.clip.encode_text(list(prompts) + [""])
        cond = PromptEncoding(enc.text_embed[:-1], enc.hidden_states[:-1].float(), enc.mask[:-1])
        empty = PromptEncoding(enc.text_embed[-1:], enc.hidden_states[-1:].float(), enc.mask[-1:])
        return cond, empty

    # -- prior --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_image_embeds(self, text: PromptEncoding, empty: PromptEncoding, *, steps: int = 25,
                            guidance_scale: float = 4.0, sampler: str = "ddpm", best_of: int = 2,
                            prior: str = "diffusion", generator: torch.Generator | None = None) -> torch.Tensor:
        """One z_i per row of `text` (B, D); best-of-N keeps the sample most similar to z_t."""
        if best_of < 1:
            raise ValueError(f"best_of must be at least 1, got {best_of}")
        b = len(text.text_embed)
        cand = text.repeat(best_of)
        if prior == "ar":
            if self.ar_prior is None:
                raise ValueError("this model has no autoregressive prior (ar_prior_config.json)")
            n = self.ar_prior.config.num_embeddings
            cand = cand.pad_to(n)
            z = self.ar_prior.generate(cand.hidden, cand.mask, cand.text_embed, generator=generator)
        elif prior == "diffusion":
            if self.prior is None:
                raise ValueError("this model has no diffusion prior (prior_config.json)")
            z = self._diffusion_prior(cand, empty, steps, guidance_scale, sampler, generator)
        else:
            raise ValueError(f"prior must be 'diffusion' or 'ar', not {prior!r}")
        z = z.view(b, best_of, -1)  # (B, N, D)
        score = (z * text.text_embed[:, None]).sum(-1)  # (B, N) dot products with z_t
        return z[torch.arange(b), score.argmax(1)]

    def _diffusion_prior(self, text, empty, steps, guidance_scale, sampler, generator):
        n = self.prior.config.num_embeddings
        cond, unc = text.pad_to(n), empty.pad_to(n).repeat(len(text.text_embed))
        pair = _cat(unc, cond)

        def denoise_pair(x, t, cond_only=False):
            e = cond if cond_only else pair
            return self.prior(x, t.expand(len(x)), e.text_embed, e.hidden, e.mask)

        sched = make_scheduler(sampler, prediction_type="sample", clip_range=5.0)
        x = torch.randn(len(text.text_embed), self.prior.config.embedding_dim, generator=generator)
        x = sample(guided(denoise_pair, guidance_scale), x, sched, steps, generator)
        return self.prior.unstandardize(x)

    # -- decoder ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, image_embeds: torch.Tensor, text: PromptEncoding, empty: PromptEncoding, *, steps: int = 25,
               guidance_scale: float = 8.0, sampler: str = "ddpm", eta: float = 0.0,
               generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
               progress: str | None = None) -> torch.Tensor:
        """z_i (B, D) + caption -> images (B, 3, S, S) in [-1, 1]."""
        dec = self.decoder
        b, s = len(image_embeds), dec.config.sample_size
        unc = empty.repeat(b)
        pair = _cat(unc, text)
        null = dec.null_image_embed[None].expand(b, -1).to(image_embeds.dtype)
        z_pair = torch.cat([null, image_embeds])

        def denoise_pair(x, t, cond_only=False):
            if cond_only:
                return dec(x, t.expand(len(x)), image_embeds, text.text_embed, text.hidden, text.mask)
            return dec(x, t.expand(len(x)), z_pair, pair.text_embed, pair.hidden, pair.mask)

        sched = make_scheduler(sampler, "epsilon", 1.0, learned_variance=dec.config.learned_variance)
        x = latents if latents is not None else torch.randn(b, 3, s, s, generator=generator)
        x = sample(guided(denoise_pair, guidance_scale, split=3), x, sched, steps, generator, eta=eta, desc=progress,
                   keep_channels=3)
        return x.clamp(-1, 1)

    # -- upsampler ----------------------------------------------------------------------------
    @torch.no_grad()
    def upsample(self, images: torch.Tensor, *, steps: int = 7, sampler: str = "ddim",
                 generator: torch.Generator | None = None, progress: str | None = None) -> torch.Tensor:
        from unclip.degrade import upsample

        up = self.upsampler
        size = images.shape[-1] * up.config.factor
        cond = upsample(images, size)
        sched = make_scheduler(sampler, "epsilon", 1.0)
        x = torch.randn(len(images), 3, size, size, generator=generator)
        x = sample(lambda x, t: up(x, t.expand(len(x)), cond), x, sched, steps, generator, desc=progress)
        return x.clamp(-1, 1)

    # -- text to image ------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_images_per_prompt: int = 1, *, prior_steps: int = 25,
                 decoder_steps: int = 25, upsampler_steps: int = 7, prior_guidance_scale: float = 4.0,
                 decoder_guidance_scale: float = 8.0, sampler: str = "ddim", eta: float = 0.0, best_of: int = 2,
                 prior: str = "diffusion", upsample: bool = True, generator: torch.Generator | None = None,
                 output_type: str = "pil", progress: bool = False) -> UnCLIPOutput:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        _check(prompts, num_images_per_prompt, sampler, output_type)
        text, empty = self.encode_prompt(prompts)
        text = text.repeat(num_images_per_prompt)
        z_i = self.sample_image_embeds(text, empty, steps=prior_steps, guidance_scale=prior_guidance_scale,
                                       sampler=sampler, best_of=best_of, prior=prior, generator=generator)
        images = self.decode(z_i, text, empty, steps=decoder_steps, guidance_scale=decoder_guidance_scale,
                             sampler=sampler, eta=eta, generator=generator, progress="decoder" if progress else None)
        if upsample and self.upsampler is not None:
            images = self.upsample(images, steps=upsampler_steps, generator=generator,
                                   progress="upsampler" if progress else None)
        return UnCLIPOutput(to_output(images, output_type), z_i)


def _check(prompts, n, sampler, output_type):
    if not prompts or any(not isinstance(p, str) for p in prompts):
        raise ValueError("prompt must be a string or a non-empty list of strings")
    if n < 1:
        raise ValueError(f"num_images_per_prompt must be at least 1, got {n}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; samplers: {', '.join(SAMPLERS)}")
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', not {output_type!r}")


def to_output(images: torch.Tensor, output_type: str):
    """(B, 3, H, W) in [-1, 1] -> PIL list | (B, H, W, 3) float numpy in [0, 1] | the tensor in [0, 1]."""
    x = (images.float() * 0.5 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return x
    arr = x.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return arr
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]


def load(path: Path | None = None) -> UnCLIPPipeline:
    """Load a model directory (default: the model shipped with the package)."""
    from unclip.models import default_model_dir

    path = path or default_model_dir()
    if path is None:
        raise FileNotFoundError("no model given and no shipped model in this installation")
    return UnCLIPPipeline.from_pretrained(path)
