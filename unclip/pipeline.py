"""Text -> image with the whole unCLIP cascade: CLIP text encoding -> prior -> decoder -> upsampler.

`pipe = unclip.load(path)`; `out = pipe("a grinning cat, 3D style", num_images_per_prompt=4)`.
The loop of each stage is explicit and readable, in the diffusers style; the text is encoded once
per call (with the unconditional "" alongside) and reused by every step of every stage.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unclip.clip import TextEncoding
from unclip.images import to_output
from unclip.sampling import DEFAULT_STEPS, SAMPLERS, check_steps


@dataclass
class UnCLIPOutput:
    images: list  # PIL images, or an array / tensor per output_type
    image_embeds: torch.Tensor  # (N, D) the z_i each image was decoded from


class UnCLIPPipeline:
    def __init__(self, clip, prior=None, decoder=None, upsampler=None, ar_prior=None, name: str = "unclip"):
        self.clip, self.prior, self.decoder, self.upsampler, self.ar_prior = clip, prior, decoder, upsampler, ar_prior
        self.name = name
        self.pca = None  # PCA of z_i (clip_pca.safetensors), for pca_reconstructions
        self.precision = "fp32"
        self.memory_format(torch.channels_last)
        self.fast_resnets(True)

    def _unets(self):
        expert = getattr(self.decoder, "expert", None)  # a decoder's high-noise expert (Decoder.expert)
        return [u for u in (getattr(self.decoder, "unet", None), getattr(expert, "unet", None),
                            getattr(self.upsampler, "unet", None), getattr(self.upsampler, "last_unet", None))
                if u is not None]

    def default_decoder_guidance(self, value: float | None = None, inverted: bool = False) -> float:
        """`value`, else 1 when decoding an inverted x_T (`invert` runs at guidance 1, and DDIM walks
        back to the image only at the guidance it was inverted at), else the decoder config's
        `guidance_scale` (what its evaluation chose), else Karlo's 8."""
        if value is not None:
            return value
        if inverted:
            return 1.0
        own = getattr(getattr(self.decoder, "config", None), "guidance_scale", None)
        return 8.0 if own is None else own

    def fast_resnets(self, enabled: bool = True) -> "UnCLIPPipeline":
        """In-place inference forward for the UNets' ResNet blocks (`unclip.fastpath`; on by default):
        bit-identical outputs, 7-14% less time per UNet call on CPU."""
        from unclip.fastpath import fast_resnets

        for unet in self._unets():
            fast_resnets(unet, enabled)
        return self

    def set_precision(self, precision: str) -> "UnCLIPPipeline":
        """"fp32" (a new pipeline's), "bf16" or "fp16": autocast around the priors, decoder and
        upsampler (`unclip.precision`). bf16 takes ~0.56x the time of fp32 on a CPU with AMX, with
        images within ~1% of the fp32 ones on average; fp16 is for GPUs. Inversion runs under it too,
        so its round trips are no longer exact (see `invert`)."""
        from unclip.precision import autocast_forward, check_precision

        check_precision(precision)
        for stage in (self.prior, self.decoder, self.upsampler):
            if stage is not None:
                autocast_forward(stage, precision)
        if self.ar_prior is not None:  # it samples through its own loop, not its forward
            autocast_forward(self.ar_prior, precision, method="generate")
        self.precision = precision
        return self

    def memory_format(self, fmt=torch.channels_last) -> "UnCLIPPipeline":
        """The UNets' weight layout. channels_last (the default) runs ~10% faster on CPU; each step
        matches contiguous_format to ~1e-6, which DDPM's clipping can grow to ~1e-3 over a whole
        sampling chain: use contiguous_format to match diffusers bit for bit."""
        for unet in self._unets():
            unet.to(memory_format=fmt)
        return self

    def with_decoder(self, decoder, name: str | None = None) -> "UnCLIPPipeline":
        """This pipeline's other stages (shared) with another decoder, e.g. a caption-only one for the
        GLIDE-like comparison: channels_last and the fast ResNet forward as a new pipeline's, at this
        pipeline's precision."""
        import copy

        from unclip.fastpath import fast_resnets
        from unclip.precision import autocast_forward

        other = copy.copy(self)  # the other stages shared, untouched
        other.decoder, other.name = decoder, name or self.name
        decoder.unet.to(memory_format=torch.channels_last)  # a new pipeline's defaults
        fast_resnets(decoder.unet, True)
        autocast_forward(decoder, self.precision)
        return other

    @classmethod
    def from_pretrained(cls, path: Path) -> "UnCLIPPipeline":
        """A model directory: clip + prior + decoder (+ super_res_first, + ar_prior when present)."""
        from unclip.clip import load_clip

        path = Path(path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"no model directory at {path}")
        from unclip.interop import is_diffusers_dir, load_diffusers

        if is_diffusers_dir(path):
            return load_diffusers(path)
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
        from unclip.models import ar_prior_dir

        ar_dir = ar_prior_dir(path)
        if (ar_dir / "ar_prior_config.json").exists():
            from unclip.ar_prior import ARPrior

            parts["ar_prior"] = ARPrior.load(ar_dir)
        from unclip.pca import load_pca

        pipe = cls(**parts, name=path.name)
        pipe.pca = load_pca(path)
        return pipe

    def load_lora(self, path: Path, scale: float = 1.0) -> "UnCLIPPipeline":
        """Add a LoRA adapter (`unclip train STAGE --lora-rank R`) to its stage; scale 0 = the base model."""
        from unclip.lora import load_lora

        load_lora(self, path, scale)
        return self

    # -- text ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[TextEncoding, TextEncoding]:
        """Encodings of the prompts and of "" (the unconditional caption), computed once per call.
        A prompt longer than the text encoder's context is truncated, with a warning."""
        import warnings

        ctx = self.clip.context_length
        for p in prompts:
            n = len(self.clip.tokenizer(p).input_ids)
            if n > ctx:
                warnings.warn(f"the prompt is {n} tokens; the text encoder reads only the first {ctx} "
                              f"(ignored: ...{p[-40:]!r})", stacklevel=3)
        enc = self.clip.encode_text(list(prompts) + [""])
        enc = TextEncoding(enc.text_embed.float(), enc.hidden_states.float(), enc.mask)
        return enc[:-1], enc[-1:]

    # -- prior --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_image_embeds(self, text: TextEncoding, empty: TextEncoding, *, steps: int = 25,
                            guidance_scale: float = 4.0, sampler: str = "ddpm", best_of: int = 2,
                            prior: str = "diffusion", generator: torch.Generator | None = None,
                            progress: bool = False) -> torch.Tensor:
        """One z_i per row of `text` (B, D); best-of-N keeps the sample most similar to z_t.

        prior: "diffusion" | "ar" (the two priors), or the paper's ablations: "text" (z_t as z_i),
        "none" (the decoder's null z_i: conditioned on the caption only). A caption-only decoder (trained
        with image_drop 1, GLIDE-like) only ever saw the null z_i: it gets that whatever `prior` says."""
        if best_of < 1:
            raise ValueError(f"best_of must be at least 1, got {best_of}")
        if prior in ("diffusion", "ar", "text") and getattr(self.decoder, "caption_only", False):
            prior = "none"
        if prior == "text":  # the paper's ablation: the caption's z_t passed as z_i
            return text.text_embed.clone()
        if prior == "none":  # no z_i at all: the learned null embedding (a caption-only, GLIDE-like decoder)
            if self.decoder is None:
                raise ValueError("this model has no decoder (decoder_config.json)")
            return self.decoder.null_image_embeds(len(text)).clone()
        b = len(text)
        cand = text.repeat(best_of)
        if prior == "ar":
            if self.ar_prior is None:
                raise ValueError("this model has no autoregressive prior (ar_prior_config.json)")
            cand, free = cand.pad_to(self.ar_prior.config.num_embeddings), empty.pad_to(self.ar_prior.config.num_embeddings)
            z = self.ar_prior.generate(cand.hidden_states, cand.mask, cand.text_embed, generator=generator,
                                       guidance_scale=guidance_scale, uncond=(free.hidden_states, free.mask, free.text_embed),
                                       progress="ar prior" if progress else None)
        elif prior == "diffusion":
            if self.prior is None:
                raise ValueError("this model has no diffusion prior (prior_config.json)")
            z = self.prior.sample(cand, empty, steps=steps, guidance_scale=guidance_scale, sampler=sampler,
                                  generator=generator, progress="prior" if progress else None)
        else:
            raise ValueError(f"prior must be 'diffusion', 'ar', 'text' or 'none', not {prior!r}")
        z = z.view(b, best_of, -1)  # (B, N, D)
        score = (z * text.text_embed[:, None]).sum(-1)  # (B, N) dot products with z_t
        return z[torch.arange(b), score.argmax(1)]

    # -- images -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, images) -> torch.Tensor:
        """PIL image(s) or (B,3,H,W) tensors in [-1, 1] -> z_i (B, D) by the CLIP image tower."""
        return self.clip.encode_image(pil_to_tensor(images, self.clip.image_size))

    @torch.no_grad()
    def invert(self, image, caption: str = "", *, steps: int = 25, guidance_scale: float = 1.0,
               fixed_point_iters: int = 0, image_embeds: torch.Tensor | None = None):
        """An image -> (z_i, x_T): DDIM (η = 0) from that pair, at the same guidance, redraws the image
        (see Decoder.invert; exactly with fixed-point iterations, in fp32 only)."""
        x = pil_to_tensor(image, self.decoder.config.sample_size)
        z_i = image_embeds if image_embeds is not None else self.encode_image(image)
        text, empty = self.encode_prompt([caption] * len(x))
        x_T = self.decoder.invert(x, z_i, text, empty, steps=steps, guidance_scale=guidance_scale,
                                  fixed_point_iters=fixed_point_iters)
        return z_i, x_T

    @torch.no_grad()
    def from_embeds(self, image_embeds: torch.Tensor, caption: str | list[str] = "", *, latents=None, noise=None,
                    decoder_steps: int = 25, upsampler_steps: int = 7, decoder_guidance_scale: float | None = None,
                    sampler: str = "ddim", eta: float = 0.0, upsample: bool = True, clip_denoised: bool | None = None,
                    generator: torch.Generator | None = None, output_type: str = "pil") -> UnCLIPOutput:
        """Decode given z_i (and optionally x_T): the shared end of variations, interpolations and edits.

        `noise`: the N(0, I) draw the decoder's start is made from (see Decoder.start), when not x_T
        itself. With x_T given (an inversion), DDIM runs on "leading" timesteps as the inversion did, and x0 is
        not clipped unless clip_denoised=True: clipping breaks the deterministic path back to the image
        (the shipped model: 15.8 dB with clipping, 21.0 dB without; 55.3 dB with 4 fixed-point iterations)."""
        if clip_denoised is None:
            clip_denoised = latents is None
        if latents is not None and sampler != "ddim":
            raise ValueError(f"an inverted x_T (latents) decodes with the ddim sampler it was inverted for, not {sampler!r}")
        _check_sampler_output(sampler, output_type)
        if not isinstance(caption, str) and len(caption) != len(image_embeds):
            raise ValueError(f"{len(caption)} captions for {len(image_embeds)} image embeddings: give one each, or one string")
        if latents is not None and len(latents) != len(image_embeds):
            raise ValueError(f"{len(latents)} latents for {len(image_embeds)} image embeddings")
        decoder_guidance_scale = self.default_decoder_guidance(decoder_guidance_scale, inverted=latents is not None)
        check_ranges(decoder_steps=decoder_steps, upsampler_steps=upsampler_steps,
                     decoder_guidance_scale=decoder_guidance_scale, eta=eta)
        check_steps(sampler, decoder_steps=decoder_steps,
                    **({"upsampler_steps": upsampler_steps} if upsample and self.upsampler is not None else {}))
        captions = [caption] * len(image_embeds) if isinstance(caption, str) else list(caption)
        text, empty = self.encode_prompt(captions)
        images = self.decoder.sample(image_embeds, text, empty, steps=decoder_steps, guidance_scale=decoder_guidance_scale,
                                     sampler=sampler, eta=eta, generator=generator, latents=latents, noise=noise,
                                     clip_denoised=clip_denoised, spacing="leading" if latents is not None else "trailing")
        if upsample and self.upsampler is not None:
            images = self.upsampler.sample(images, steps=upsampler_steps, sampler=sampler, generator=generator)
        return UnCLIPOutput(to_output(images, output_type), image_embeds)

    def _inversion_kwargs(self, kwargs: dict, decoder_steps: int) -> dict:
        """What `invert` must share with the decoding of its x_T: steps, guidance and caption (a
        sampler other than DDIM is refused: the inversion is DDIM's)."""
        if kwargs.get("sampler", "ddim") != "ddim":
            raise ValueError(f"variations, interpolations and edits sample with ddim, not {kwargs['sampler']!r}")
        kwargs.pop("sampler", None)
        guidance = self.default_decoder_guidance(kwargs.get("decoder_guidance_scale"), inverted=True)
        caption = kwargs.get("caption", "")
        if not isinstance(caption, str):
            raise ValueError("caption must be one string here (the inversion and every frame share it)")
        return {"steps": decoder_steps, "guidance_scale": guidance, "caption": caption}

    def variations(self, image, num_images: int = 4, *, eta: float = 1.0, use_inversion: bool = False,
                   decoder_steps: int = 25, **kwargs) -> UnCLIPOutput:
        """New images with the same z_i. DDIM η trades fidelity for variety; with use_inversion the
        starting noise is the image's own x_T (inverted at the decoding's guidance and caption), so
        η = 0 reconstructs it."""
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        inv = self._inversion_kwargs(kwargs, decoder_steps)
        z_i = self.encode_image(image)
        latents = None
        if use_inversion:
            z_i, x_T = self.invert(image, image_embeds=z_i, **inv)
            latents = x_T.repeat_interleave(num_images, 0)
        return self.from_embeds(z_i.repeat_interleave(num_images, 0), latents=latents, eta=eta,
                                decoder_steps=decoder_steps, sampler="ddim", **kwargs)

    def interpolate(self, a, b, frames: int = 8, *, invert: bool = True, decoder_steps: int = 25,
                    **kwargs) -> UnCLIPOutput:
        """slerp between two images' z_i (and their inverted x_T) or two prompts' prior z_i."""
        if frames < 2:
            raise ValueError(f"frames must be at least 2, got {frames}")
        inv = self._inversion_kwargs(kwargs, decoder_steps)
        if isinstance(a, str) and isinstance(b, str):
            text, empty = self.encode_prompt([a, b])
            gen = kwargs.get("generator")
            z = self.sample_image_embeds(text, empty, generator=gen)
            z_a, z_b, x_a, x_b = z[:1], z[1:], None, None
            # one shared start noise keeps the layout steady along the path (shaped by the decoder's start)
            noise = self.decoder.shared_noise(frames, gen) if invert else None
        else:
            (z_a, x_a), (z_b, x_b) = ((self.invert(im, **inv) if invert else (self.encode_image(im), None))
                                      for im in (a, b))
            noise = None
        ts = torch.linspace(0, 1, frames)
        z = torch.cat([slerp(z_a, z_b, float(t)) for t in ts])
        latents = torch.cat([slerp(x_a, x_b, float(t)) for t in ts]) if x_a is not None else None
        return self.from_embeds(z, latents=latents, noise=noise, decoder_steps=decoder_steps, sampler="ddim", **kwargs)

    def text_diff(self, image, from_caption: str, to_caption: str, thetas=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5), *,
                  decoder_steps: int = 25, **kwargs) -> UnCLIPOutput:
        """Language-guided edit: slerp z_i towards z_d = normalize(z_t(to) - z_t(from)) by each θ,
        with x_T fixed from the image's inversion. The edit lives in z_i alone: the decoder's caption is
        "" in the inversion and in every frame, so θ = 0 redraws the image."""
        thetas = list(thetas)
        if not thetas:
            raise ValueError("thetas must hold at least one value")
        text, _ = self.encode_prompt([from_caption, to_caption])
        diff = text.text_embed[1:] - text.text_embed[:1]
        if float(diff.norm()) < 1e-6:
            raise ValueError(f"{from_caption!r} and {to_caption!r} encode to the same z_t: there is no direction to edit along")
        z_i, x_T = self.invert(image, **self._inversion_kwargs(kwargs, decoder_steps))
        z_d = torch.nn.functional.normalize(diff, dim=-1)
        norm = z_i.norm(dim=-1, keepdim=True)
        z = torch.cat([slerp(z_i / norm, z_d, float(t)) * norm for t in thetas])
        return self.from_embeds(z, latents=x_T.repeat(len(thetas), 1, 1, 1), decoder_steps=decoder_steps, sampler="ddim",
                                **kwargs)

    def pca_reconstructions(self, image, ks=(1, 2, 4, 8, 16, 32, 64), *, decoder_steps: int = 25,
                            generator: torch.Generator | None = None, **kwargs) -> UnCLIPOutput:
        """Decode an image's z_i kept to its first k principal components, one image per k, all from
        the same start noise (DDIM, η = 0; shaped by the decoder's start as in `__call__`): which
        attributes the first components already carry."""
        from unclip.pca import project

        if self.pca is None:
            raise ValueError(f"model {self.name!r} has no clip_pca.safetensors; write it with `unclip pca --model DIR`")
        z_i = self.encode_image(image)
        z = torch.cat([project(z_i, self.pca, k) for k in ks])
        return self.from_embeds(z, noise=self.decoder.shared_noise(len(ks), generator), decoder_steps=decoder_steps,
                                sampler="ddim", generator=generator, **kwargs)

    # -- text to image ------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_images_per_prompt: int = 1, *, prior_steps: int | None = None,
                 decoder_steps: int | None = None, upsampler_steps: int | None = None, prior_guidance_scale: float = 4.0,
                 decoder_guidance_scale: float | None = None, sampler: str = "ddim", eta: float = 0.0, best_of: int = 2,
                 rerank: int = 1, rerank_at: int | None = None, prior: str = "diffusion", upsample: bool = True,
                 upsampler_strength: float | None = None, generator: torch.Generator | None = None,
                 output_type: str = "pil", progress: bool = False) -> UnCLIPOutput:
        """Text -> images. Steps left as None take the sampler's defaults (sampling.DEFAULT_STEPS);
        upsampler_strength None takes the upsampler's own (its config; 1 = from pure noise, as Karlo);
        decoder_guidance_scale None the decoder's own (`default_decoder_guidance`). rerank K > 1: K
        decoder images per output (each from its own prior sample), the one the CLIP stage finds closest
        to the prompt kept before upsampling (`rerank_images`; K times the prior's and decoder's time).
        rerank_at s: compare the K candidates on the clean images the decoder predicts at its s-th step
        instead of on the finished ones, and run the remaining steps on the kept one only (K·s + rest
        decoder passes instead of K·all); s = decoder_steps compares the finished images."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        decoder_guidance_scale = self.default_decoder_guidance(decoder_guidance_scale)
        _check(prompts, num_images_per_prompt, sampler, output_type)
        if not isinstance(rerank, int) or not 1 <= rerank <= 16:
            raise ValueError(f"rerank must be an integer between 1 and 16, got {rerank!r}")
        if rerank_at is not None and (rerank == 1 or not isinstance(rerank_at, int) or rerank_at < 1):
            raise ValueError(f"rerank_at is a decoder step (an integer >= 1) at which rerank > 1 candidates are "
                             f"compared, got rerank_at {rerank_at!r} with rerank {rerank}")
        d = DEFAULT_STEPS[sampler]
        prior_steps = d["prior"] if prior_steps is None else prior_steps
        decoder_steps = d["decoder"] if decoder_steps is None else decoder_steps
        upsampler_steps = d["upsampler"] if upsampler_steps is None else upsampler_steps
        check_ranges(prior_steps=prior_steps, decoder_steps=decoder_steps, upsampler_steps=upsampler_steps,
                     prior_guidance_scale=prior_guidance_scale, decoder_guidance_scale=decoder_guidance_scale, eta=eta)
        check_steps(sampler, decoder_steps=decoder_steps, **({"prior_steps": prior_steps} if prior == "diffusion" else {}),
                    **({"upsampler_steps": upsampler_steps} if upsample and self.upsampler is not None else {}))
        if rerank_at is not None and rerank_at > decoder_steps:
            raise ValueError(f"rerank_at {rerank_at} is past the decoder's {decoder_steps} steps")
        if upsampler_strength is not None and not 0 < upsampler_strength <= 1:  # before any stage runs
            raise ValueError(f"upsampler_strength must be in (0, 1], got {upsampler_strength}")
        text, empty = self.encode_prompt(prompts)
        text = text.repeat(num_images_per_prompt * rerank)  # prompt-major; each output's K candidates in a row
        z_i = self.sample_image_embeds(text, empty, steps=prior_steps, guidance_scale=prior_guidance_scale,
                                       sampler=sampler, best_of=best_of, prior=prior, generator=generator,
                                       progress=progress)
        if self.decoder is None:
            raise ValueError("this model has no decoder (decoder_config.json)")
        kept = []  # the candidates chosen at step rerank_at

        def choose(x0):  # (B*K, 3, S, S) predicted clean images -> kept rows (B,)
            kept.append(self.rerank_images(x0, text.text_embed, rerank))
            return kept[0]

        images = self.decoder.sample(z_i, text, empty, steps=decoder_steps, guidance_scale=decoder_guidance_scale,
                                     sampler=sampler, eta=eta, generator=generator,
                                     progress="decoder" if progress else None,
                                     select=(rerank_at, choose) if rerank_at is not None and rerank_at < decoder_steps
                                     else None)  # at the last step: the finished images (the decoder may skip t = 999)
        if kept:
            z_i = z_i[kept[0]]
        elif rerank > 1:
            keep = self.rerank_images(images, text.text_embed, rerank)
            images, z_i = images[keep], z_i[keep]
        if upsample and self.upsampler is not None:
            images = self.upsampler.sample(images, steps=upsampler_steps, sampler=sampler, strength=upsampler_strength,
                                           generator=generator, progress="upsampler" if progress else None)
        return UnCLIPOutput(to_output(images, output_type), z_i)

    @torch.no_grad()
    def rerank_images(self, images: torch.Tensor, text_embed: torch.Tensor, k: int) -> torch.Tensor:
        """CLIP reranking (as DALL·E's): images (B*K, 3, H, W) in [-1, 1], K candidates of each output in a
        row, and their prompts' z_t (B*K, D) -> indices (B,) of the candidate whose CLIP image embedding
        has the largest cosine with z_t."""
        if len(images) % k or len(images) != len(text_embed):
            raise ValueError(f"{len(images)} images and {len(text_embed)} text embeddings do not make rows of {k}")
        e = F.normalize(self.encode_image(images).float(), dim=-1)  # (B*K, D)
        score = (e * F.normalize(text_embed.float(), dim=-1)).sum(-1).view(-1, k)  # (B, K)
        return torch.arange(len(score)) * k + score.argmax(1)

    def clip_guided(self, prompt: str | list[str], num_images_per_prompt: int = 1, *, steps: int = 50,
                    clip_guidance_scale: float = 300.0, cutn: int = 16, condition: str = "caption",
                    guidance_scale: float | None = None, sampler: str = "ddim", eta: float = 0.0, upsampler_steps: int = 7,
                    upsample: bool = True, generator: torch.Generator | None = None, output_type: str = "pil",
                    progress: bool = False) -> UnCLIPOutput:
        """The CLIP-guided baseline (clip_guided.py) on this model's decoder and CLIP: no prior, no z_i.
        `image_embeds` of the output are the CLIP embeddings of the images it made; guidance_scale
        (the caption's classifier-free guidance) None takes the decoder's own."""
        from unclip.clip_guided import clip_guided_denoiser
        from unclip.sampling import make_scheduler, sample

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        _check(prompts, num_images_per_prompt, sampler, output_type)
        guidance_scale = self.default_decoder_guidance(guidance_scale)
        check_ranges(steps=steps, guidance_scale=guidance_scale, eta=eta, upsampler_steps=upsampler_steps)
        if clip_guidance_scale < 0 or cutn < 1:
            raise ValueError(f"clip_guidance_scale must be >= 0 and cutn >= 1, got {clip_guidance_scale} and {cutn}")
        if self.decoder is None:
            raise ValueError("this model has no decoder (decoder_config.json)")
        text, empty = self.encode_prompt(prompts)
        text = text.repeat(num_images_per_prompt)
        sched = make_scheduler(sampler, "epsilon", 1.0, learned_variance=self.decoder.config.learned_variance)
        denoise = clip_guided_denoiser(self.decoder, self.clip, text, empty, sched.alphas_cumprod,
                                       clip_guidance_scale=clip_guidance_scale, cutn=cutn, condition=condition,
                                       guidance_scale=guidance_scale, generator=generator)
        s = self.decoder.config.sample_size
        x = torch.randn(len(text), 3, s, s, generator=generator)
        images = sample(denoise, x, sched, steps, generator, eta=eta, desc="clip-guided decoder" if progress else None,
                        keep_channels=3).clamp(-1, 1)
        with torch.no_grad():
            z = self.clip.encode_image(images)
            if upsample and self.upsampler is not None:
                images = self.upsampler.sample(images, steps=upsampler_steps, generator=generator,
                                               progress="upsampler" if progress else None)
        return UnCLIPOutput(to_output(images, output_type), z)


def _check(prompts, n, sampler, output_type):
    if not prompts or any(not isinstance(p, str) for p in prompts):
        raise ValueError("prompt must be a string or a non-empty list of strings")
    if n < 1:
        raise ValueError(f"num_images_per_prompt must be at least 1, got {n}")
    _check_sampler_output(sampler, output_type)


def _check_sampler_output(sampler, output_type):
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; samplers: {', '.join(SAMPLERS)}")
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', not {output_type!r}")


RANGES = {"steps": (1, 1000), "guidance_scale": (0.0, 100.0), "eta": (0.0, 1.0)}


def check_ranges(**values) -> None:
    """Each *_steps in 1..1000, *_guidance_scale in 0..100, eta in 0..1; one clear error otherwise."""
    for name, v in values.items():
        kind = next(k for k in RANGES if name.endswith(k))
        lo, hi = RANGES[kind]
        if not lo <= v <= hi or (kind == "steps" and int(v) != v):
            raise ValueError(f"{name} must be {'an integer ' if kind == 'steps' else ''}between {lo} and {hi}, got {v}")


def load(path: Path | None = None) -> UnCLIPPipeline:
    """Load a model directory (default: the model shipped with the package)."""
    from unclip.models import default_model_dir

    path = path or default_model_dir()
    if path is None:
        raise FileNotFoundError("no model given and no shipped model in this installation")
    return UnCLIPPipeline.from_pretrained(path)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation along the great circle from a to b (rows), keeping the norm's scale."""
    a32, b32 = a.flatten(1).float(), b.flatten(1).float()
    na, nb = a32.norm(dim=-1, keepdim=True), b32.norm(dim=-1, keepdim=True)
    cos = ((a32 / na) * (b32 / nb)).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    omega = torch.acos(cos)
    so = torch.sin(omega)
    out = torch.where(so > 1e-6, (torch.sin((1 - t) * omega) / so) * a32 + (torch.sin(t * omega) / so) * b32,
                      (1 - t) * a32 + t * b32)
    return out.view_as(a).to(a.dtype)


def pil_to_tensor(images, size: int) -> torch.Tensor:
    """PIL image(s) (any mode; transparency composited onto white) or a tensor -> (B, 3, size, size) in [-1, 1]."""
    if torch.is_tensor(images):
        x = images if images.ndim == 4 else images[None]
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        return x.float()
    from PIL import Image

    from unclip.data.render import on_white

    ims = [images] if isinstance(images, Image.Image) else list(images)
    out = []
    for im in ims:
        im = on_white(im).resize((size, size), Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(out)
