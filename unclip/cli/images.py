"""`unclip generate`, the image commands (vary, invert, interpolate, edit, guided, probe) and `export`."""

from pathlib import Path

from unclip.cli.common import (add_guidance_interval, add_precision, apply_loras, check_prompt, common_params,
                               image_or_prompt, load_pipe, number_list, open_image, png_path, save_grid)


def register(sub) -> None:
    g = sub.add_parser("generate", help="text -> image grid (PNG with its parameters)")
    g.add_argument("prompt")
    g.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    g.add_argument("--num-images", type=int, default=4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--sampler", default="ddim", help="ddpm | ddim | dpm++ (default: ddim)")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM η (0: deterministic)")
    g.add_argument("--prior", choices=("diffusion", "ar", "text", "none"), default="diffusion",
                   help="diffusion | ar, or the ablations: text (z_t as z_i), none (caption-only decoder)")
    g.add_argument("--best-of", type=int, default=2, help="prior samples per image; keeps the closest to the text")
    g.add_argument("--rerank", type=int, default=1, help="decoder images per image; keeps the one the CLIP stage finds "
                   "closest to the prompt (K times the prior's and decoder's time; default 1: none)")
    g.add_argument("--rerank-at", type=int, metavar="STEP", help="with --rerank: compare the candidates on the image the "
                   "decoder predicts at this step and finish the kept one only (default: on the finished images)")
    g.add_argument("--prior-steps", type=int, help="default: the sampler's (ddpm 25, ddim 25, dpm++ 6)")
    g.add_argument("--decoder-steps", type=int, help="default: the sampler's (ddpm 50, ddim 25, dpm++ 12)")
    g.add_argument("--upsampler-steps", type=int, help="default: the sampler's (ddpm 7, ddim 7, dpm++ 2)")
    g.add_argument("--prior-guidance", type=float, default=4.0)
    g.add_argument("--decoder-guidance", type=float, help="default: the model's (its decoder config), else 8")
    add_guidance_interval(g)
    g.add_argument("--no-upsample", action="store_true", help="stop at the decoder's resolution")
    g.add_argument("--upsampler-strength", type=float,
                   help="1: upsample from pure noise (Karlo); below 1: from the noised bicubic image, fewer steps "
                        "(default: the upsampler's own)")
    g.add_argument("--lora", action="append", metavar="FILE[:SCALE]", help="a LoRA adapter from `train --lora-rank` "
                   "(repeatable; SCALE multiplies its update, default 1)")
    add_precision(g)
    g.add_argument("--threads", type=int, default=0)
    g.add_argument("--out", type=png_path, default=Path("unclip.png"))
    g.set_defaults(fn=_generate)

    def image_command(name, help_, fn, out):
        c = sub.add_parser(name, help=help_)
        c.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
        c.add_argument("--seed", type=int, default=0)
        c.add_argument("--decoder-steps", type=int, default=25)
        c.add_argument("--decoder-guidance", type=float,
                       help="default: 1 when decoding an inverted x_T (vary --inversion, interpolate of two images, edit), "
                            "else the model's (its decoder config), else 8")
        add_precision(c)
        c.add_argument("--threads", type=int, default=0)
        c.add_argument("--out", type=png_path, default=Path(out))
        c.set_defaults(fn=fn)
        return c

    v = image_command("vary", "variations of an image: same z_i, new details", _vary, "variations.png")
    v.add_argument("image", type=Path)
    v.add_argument("--num-images", type=int, default=4)
    v.add_argument("--eta", type=float, default=1.0, help="DDIM η: 0 keeps the most, 1 varies the most")
    v.add_argument("--inversion", action="store_true", help="start from the image's own inverted x_T")

    i = image_command("invert", "DDIM inversion: an image -> (z_i, x_T), saved as safetensors, with its reconstruction",
                      _invert, "inversion.png")
    i.add_argument("image", type=Path)
    i.add_argument("--caption", default="", help="the caption to invert under (default: none)")
    i.add_argument("--fixed-point-iters", type=int, default=0, help="per-step refinements (exact inversion as it grows)")

    it = image_command("interpolate", "slerp between two images (or two prompts): a grid and a GIF", _interpolate,
                       "interpolation.png")
    it.add_argument("a", help="image path or prompt")
    it.add_argument("b", help="image path or prompt")
    it.add_argument("--frames", type=int, default=8)

    ed = image_command("edit", "text diff: move an image from one caption towards another", _edit, "edit.png")
    ed.add_argument("image", type=Path)
    ed.add_argument("--from", dest="from_text", required=True, help="a caption of the image as it is")
    ed.add_argument("--to", dest="to_text", required=True, help="the caption it should move towards")
    ed.add_argument("--thetas", type=number_list(float), default=[0, 0.1, 0.2, 0.3, 0.4, 0.5],
                    help="comma-separated slerp amounts (default 0,0.1,0.2,0.3,0.4,0.5)")

    gd = image_command("guided", "the CLIP-guided baseline: the decoder steered by CLIP gradients (no prior, no z_i)",
                       _guided, "clip_guided.png")
    gd.add_argument("prompt")
    gd.add_argument("--num-images", type=int, default=4)
    gd.add_argument("--clip-guidance", type=float, default=300.0, help="scale of the CLIP similarity gradient")
    gd.add_argument("--cutn", type=int, default=16, help="random crops scored by CLIP per image and step")
    gd.add_argument("--condition", choices=("caption", "none"), default="caption",
                    help="decoder conditioned on the caption (GLIDE-like) or on nothing")
    gd.add_argument("--sampler", default="ddim", help="ddpm | ddim | dpm++ (default: ddim)")
    gd.add_argument("--upsampler-steps", type=int, default=7)
    gd.add_argument("--no-upsample", action="store_true", help="stop at the decoder's resolution")

    pb = image_command("probe", "what z_i keeps: decode an image from its first k PCA components, for each k", _probe,
                       "pca_probe.png")
    pb.add_argument("image", type=Path)
    pb.add_argument("--ks", type=number_list(int), default=[1, 2, 4, 8, 16, 32, 64, 384],
                    help="comma-separated component counts (default 1,2,4,8,16,32,64,384)")

    ex = sub.add_parser("export", help="write a model in another format").add_subparsers(dest="export_format", required=True)
    exd = ex.add_parser("diffusers", help="diffusers' UnCLIPPipeline layout (Karlo's), fp32 safetensors")
    exd.add_argument("out", type=Path)
    exd.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    exd.add_argument("--threads", type=int, default=0)
    exd.set_defaults(fn=_export)


def _generate(a) -> int:
    import torch

    from unclip.images import grid, save_png
    from unclip.models import model_hash

    check_prompt(a.prompt)
    pipe, model = load_pipe(a)
    loras = apply_loras(pipe, a.lora)
    from unclip.sampling import DEFAULT_STEPS

    d = DEFAULT_STEPS.get(a.sampler, {})
    steps = {f"{k}_steps": v if v is not None else d.get(k) for k, v in
             (("prior", a.prior_steps), ("decoder", a.decoder_steps), ("upsampler", a.upsampler_steps))}
    params = {"prompt": a.prompt, "seed": a.seed, "num_images": a.num_images, "prior": a.prior, **steps,
              "prior_guidance_scale": a.prior_guidance,
              "decoder_guidance_scale": a.decoder_guidance,
              **({"decoder_guidance_interval": list(pipe.decoder.config.guidance_interval)}
                 if pipe.decoder.config.guidance_interval else {}),
              "sampler": a.sampler, "eta": a.eta, "best_of": a.best_of,
              **({"rerank": a.rerank} if a.rerank != 1 else {}),
              **({"rerank_at": a.rerank_at} if a.rerank_at is not None else {}), "precision": a.precision,
              "model": str(model), "model_hash": model_hash(model),
              "upsample": not a.no_upsample and pipe.upsampler is not None,
              "upsampler_strength": a.upsampler_strength if a.upsampler_strength is not None else
              (pipe.upsampler.config.strength if pipe.upsampler is not None else None),
              **({"lora": loras} if loras else {})}
    out = pipe(a.prompt, a.num_images, **steps, prior_guidance_scale=a.prior_guidance,
               decoder_guidance_scale=a.decoder_guidance, sampler=a.sampler, eta=a.eta, best_of=a.best_of,
               rerank=a.rerank, rerank_at=a.rerank_at, prior=a.prior, upsample=not a.no_upsample, upsampler_strength=a.upsampler_strength,
               generator=torch.Generator().manual_seed(a.seed), progress=True)
    save_png(grid(out.images), a.out, params)
    print(f"wrote {a.out} ({a.num_images} images of {out.images[0].size[0]} px)")
    return 0


def _guided(a) -> int:
    import torch

    pipe, model = load_pipe(a)
    check_prompt(a.prompt)
    out = pipe.clip_guided(a.prompt, a.num_images, steps=a.decoder_steps, clip_guidance_scale=a.clip_guidance,
                           cutn=a.cutn, condition=a.condition, guidance_scale=a.decoder_guidance, sampler=a.sampler,
                           upsampler_steps=a.upsampler_steps, upsample=not a.no_upsample,
                           generator=torch.Generator().manual_seed(a.seed), progress=True)
    save_grid(out.images, a, common_params(a, model, task="clip_guided", prompt=a.prompt, num_images=a.num_images,
                                           clip_guidance_scale=a.clip_guidance, cutn=a.cutn, condition=a.condition,
                                           sampler=a.sampler, upsample=not a.no_upsample, upsampler_steps=a.upsampler_steps))
    return 0


def _probe(a) -> int:
    import torch

    ks = a.ks
    pipe, model = load_pipe(a)
    out = pipe.pca_reconstructions(open_image(a.image), ks, decoder_steps=a.decoder_steps,
                                   decoder_guidance_scale=a.decoder_guidance, generator=torch.Generator().manual_seed(a.seed))
    save_grid(out.images, a, common_params(a, model, task="pca_probe", image=str(a.image), ks=ks), cols=len(ks))
    return 0


def _vary(a) -> int:
    import torch

    pipe, model = load_pipe(a, inverted=a.inversion)
    out = pipe.variations(open_image(a.image), a.num_images, eta=a.eta, use_inversion=a.inversion,
                          decoder_steps=a.decoder_steps, decoder_guidance_scale=a.decoder_guidance,
                          generator=torch.Generator().manual_seed(a.seed))
    save_grid(out.images, a, common_params(a, model, task="variations", image=str(a.image), num_images=a.num_images,
                                           eta=a.eta, inversion=a.inversion))
    return 0


def _invert(a) -> int:
    import torch

    from unclip.images import to_output
    from unclip.pipeline import pil_to_tensor
    from unclip.weights import save_safetensors

    pipe, model = load_pipe(a, inverted=True)
    image = open_image(a.image)
    z_i, x_T = pipe.invert(image, a.caption, steps=a.decoder_steps, guidance_scale=a.decoder_guidance,
                           fixed_point_iters=a.fixed_point_iters)
    latents = Path(a.out).with_suffix(".safetensors")
    save_safetensors({"image_embeds": z_i, "latents": x_T}, latents,  # what decoding them back needs
                     {"steps": str(a.decoder_steps), "guidance_scale": str(a.decoder_guidance), "caption": a.caption})
    back = pipe.from_embeds(z_i, a.caption, latents=x_T, decoder_steps=a.decoder_steps, decoder_guidance_scale=a.decoder_guidance,
                            upsample=False, output_type="pt").images  # (1, 3, S, S) in [0, 1]
    target = pil_to_tensor(image, back.shape[-1]) * 0.5 + 0.5
    psnr = float(10 * torch.log10(1 / ((back - target) ** 2).mean()))
    save_grid(to_output(torch.cat([target, back]) * 2 - 1, "pil"), a,
          common_params(a, model, task="invert", image=str(a.image), caption=a.caption,
                        fixed_point_iters=a.fixed_point_iters, psnr=round(psnr, 2)))
    print(f"x_T and z_i in {latents}; reconstruction PSNR {psnr:.2f} dB at guidance {a.decoder_guidance:g}")
    return 0


def _interpolate(a) -> int:
    import torch

    from unclip.images import save_animation

    x, y = image_or_prompt(a.a), image_or_prompt(a.b)
    if isinstance(x, str) != isinstance(y, str):
        raise ValueError("interpolate takes two images or two prompts, not one of each")
    pipe, model = load_pipe(a, inverted=not isinstance(x, str))
    out = pipe.interpolate(x, y, a.frames, decoder_steps=a.decoder_steps, decoder_guidance_scale=a.decoder_guidance,
                           generator=torch.Generator().manual_seed(a.seed))
    save_grid(out.images, a, common_params(a, model, task="interpolate", start=a.a, end=a.b, frames=a.frames), cols=a.frames)
    frames = out.images + out.images[::-1][1:-1]  # there and back
    for ext in (".gif", ".webp"):
        anim = Path(a.out).with_suffix(ext)
        save_animation(frames, anim)
        print(f"wrote {anim}")
    return 0


def _edit(a) -> int:
    import torch

    thetas = a.thetas
    pipe, model = load_pipe(a, inverted=True)
    out = pipe.text_diff(open_image(a.image), a.from_text, a.to_text, thetas, decoder_steps=a.decoder_steps,
                         decoder_guidance_scale=a.decoder_guidance, generator=torch.Generator().manual_seed(a.seed))
    save_grid(out.images, a, common_params(a, model, task="text_diff", image=str(a.image), **{"from": a.from_text, "to": a.to_text},
                                 thetas=thetas), cols=len(thetas))
    return 0


def _export(a) -> int:
    from unclip.interop import export_diffusers

    pipe, model = load_pipe(a)
    out = export_diffusers(pipe, a.out)
    print(f"wrote {out} (diffusers UnCLIPPipeline layout; load it with `import unclip.interop` first)")
    return 0
