"""Text -> image with the whole unCLIP cascade: CLIP text encoding -> prior -> decoder -> upsampler.

`pipe = unclip.load(path)`; `out = pipe("a grinning cat, 3D style", num_images_per_prompt=4)`.
The loop of each stage is explicit and readable, in the diffusers style; the text is encoded once
per call (with the unconditional "" alongside) and reused by every step of every stage.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from unclip.clip import TextEncoding
from unclip.images import to_output
from unclip.sampling import SAMPLERS


@dataclass
class UnCLIPOutput:
    images: list  # PIL images, or an array / tensor per output_type
    image_embeds: torch.Tensor  # (N, D) the z_i each image was decoded from


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
    def encode_prompt(self, prompts: list[str]) -> tuple[TextEncoding, TextEncoding]:
        """Encodings of the prompts and of "" (the unconditional caption), computed once per call."""
        enc = self.clip.encode_text(list(prompts) + [""])
        enc = TextEncoding(enc.text_embed.float(), enc.hidden_states.float(), enc.mask)
        return enc[:-1], enc[-1:]

    # -- prior --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_image_embeds(self, text: TextEncoding, empty: TextEncoding, *, steps: int = 25,
                            guidance_scale: float = 4.0, sampler: str = "ddpm", best_of: int = 2,
                            prior: str = "diffusion", generator: torch.Generator | None = None) -> torch.Tensor:
        """One z_i per row of `text` (B, D); best-of-N keeps the sample most similar to z_t."""
        if best_of < 1:
            raise ValueError(f"best_of must be at least 1, got {best_of}")
        b = len(text)
        cand = text.repeat(best_of)
        if prior == "ar":
            if self.ar_prior is None:
                raise ValueError("this model has no autoregressive prior (ar_prior_config.json)")
            cand = cand.pad_to(self.ar_prior.config.num_embeddings)
            z = self.ar_prior.generate(cand.hidden_states, cand.mask, cand.text_embed, generator=generator)
        elif prior == "diffusion":
            if self.prior is None:
                raise ValueError("this model has no diffusion prior (prior_config.json)")
            z = self.prior.sample(cand, empty, steps=steps, guidance_scale=guidance_scale, sampler=sampler,
                                  generator=generator)
        else:
            raise ValueError(f"prior must be 'diffusion' or 'ar', not {prior!r}")
        z = z.view(b, best_of, -1)  # (B, N, D)
        score = (z * text.text_embed[:, None]).sum(-1)  # (B, N) dot products with z_t
        return z[torch.arange(b), score.argmax(1)]

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
        if self.decoder is None:
            raise ValueError("this model has no decoder (decoder_config.json)")
        images = self.decoder.sample(z_i, text, empty, steps=decoder_steps, guidance_scale=decoder_guidance_scale,
                                     sampler=sampler, eta=eta, generator=generator,
                                     progress="decoder" if progress else None)
        if upsample and self.upsampler is not None:
            images = self.upsampler.sample(images, steps=upsampler_steps, generator=generator,
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


def load(path: Path | None = None) -> UnCLIPPipeline:
    """Load a model directory (default: the model shipped with the package)."""
    from unclip.models import default_model_dir

    path = path or default_model_dir()
    if path is None:
        raise FileNotFoundError("no model given and no shipped model in this installation")
    return UnCLIPPipeline.from_pretrained(path)
