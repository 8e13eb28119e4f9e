"""Decoder: a GLIDE-style diffusion UNet producing 64×64 images from the CLIP image embedding z_i.

Built from the diffusers classes Karlo uses, so weights map one to one to `UnCLIPPipeline`:
- `UnCLIPTextProjModel` projects z_i (and z_t) into the timestep embedding (the UNet's
  `class_embed_type="identity"` adds it) and into 4 extra context tokens, concatenated to the
  projected, LayerNormed caption token states;
- `UNet2DConditionModel` with ResNet levels first and `SimpleCrossAttn` levels after them
  (spatial self-attention and the context share one softmax), out_channels = 6 (ε and the
  learned variance of improved DDPM / GLIDE).
Classifier-free guidance: z_i is replaced by the learned null embedding 10% of the time, and the
caption by the encoding of "" 50% of the time (the unconditional caption is "", as in Karlo).
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from unclip.conditioning import ConditionedTask
from unclip.diffusion import eps_from_rotated
from unclip.weights import check_same_config, load_diffusers_module, save_diffusers


@dataclass
class DecoderConfig:
    sample_size: int = 64
    block_out_channels: tuple[int, ...] = (32, 64, 96, 128)
    layers_per_block: int = 2
    attention_levels: int = 2  # the last N levels (and the middle) use cross-attention blocks
    attention_head_dim: int = 32
    cross_attention_dim: int = 256
    clip_embed_dim: int = 384  # width of z_i, z_t and the caption token states
    clip_extra_context_tokens: int = 4
    norm_num_groups: int = 32
    learned_variance: bool = True
    image_drop: float = 0.1  # CFG: z_i -> learned null embedding
    caption_drop: float = 0.5  # CFG: caption -> ""
    dc_mean: tuple[float, ...] | None = None  # training images' mean colour in [-1, 1]: the mean start (see `start`)
    guidance_scale: float | None = None  # this model's default text-to-image guidance (None: Karlo's 8)
    guidance_interval: tuple[int, int] | None = None  # guide only at t_lo <= t <= t_hi (`sampling.guided`); None: every t
    loss_options: dict | None = None  # the DecoderTask loss options it was trained with; a fine-tune keeps them
    v_ramp: tuple[int, int] | None = None  # (t_a, t_b): predicts ε below t_a, v above t_b (`Decoder.forward`); None: ε
    expert_from: int | None = None  # t >= this run the high-noise expert in DIR/decoder_expert (eDiff-I); None: none

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)  # JSON presets and configs hold lists
        if self.dc_mean is not None:
            self.dc_mean = tuple(float(v) for v in self.dc_mean)
        if self.guidance_interval is not None:
            from unclip.sampling import check_guidance_interval

            check_guidance_interval(self.guidance_interval)
            self.guidance_interval = tuple(int(v) for v in self.guidance_interval)
        if self.expert_from is not None and not (isinstance(self.expert_from, int) and 1 <= self.expert_from <= 999):
            raise ValueError(f"expert_from is a timestep in 1..999, got {self.expert_from!r}")
        if self.v_ramp is not None:
            from unclip.sampling import check_guidance_interval

            check_guidance_interval(self.v_ramp, "v_ramp")  # the same kind of pair: t_a <= t_b in 0..999
            self.v_ramp = tuple(int(v) for v in self.v_ramp)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]


class Decoder(nn.Module):
    mean_start = True  # use config.dc_mean when present (`start`); False: N(0, I) from t = T, as diffusers
    def __init__(self, config: DecoderConfig):
        super().__init__()
        from diffusers import UNet2DConditionModel
        from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

        self.config = config
        n = len(config.block_out_channels)
        a = config.attention_levels
        down = ("ResnetDownsampleBlock2D",) * (n - a) + ("SimpleCrossAttnDownBlock2D",) * a
        up = ("SimpleCrossAttnUpBlock2D",) * a + ("ResnetUpsampleBlock2D",) * (n - a)
        self.unet = UNet2DConditionModel(
            sample_size=config.sample_size, in_channels=3, out_channels=6 if config.learned_variance else 3,
            down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
            cross_attention_dim=config.cross_attention_dim, attention_head_dim=config.attention_head_dim,
            resnet_time_scale_shift="scale_shift", class_embed_type="identity", norm_num_groups=config.norm_num_groups,
        )
        self.text_proj = UnCLIPTextProjModel(
            clip_extra_context_tokens=config.clip_extra_context_tokens, clip_embeddings_dim=config.clip_embed_dim,
            time_embed_dim=config.time_embed_dim, cross_attention_dim=config.cross_attention_dim,
        )
        self.expert: "Decoder | None" = None  # the high-noise expert (config.expert_from), loaded with the model

    @classmethod
    def wrap(cls, unet, text_proj) -> "Decoder":
        """An existing diffusers UNet2DConditionModel + UnCLIPTextProjModel (e.g. Karlo's), weights shared."""
        c = unet.config
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.config = DecoderConfig(
            sample_size=c.sample_size, block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
            attention_levels=sum("CrossAttn" in b for b in c.down_block_types), attention_head_dim=c.attention_head_dim,
            cross_attention_dim=c.cross_attention_dim, clip_embed_dim=text_proj.config.clip_embeddings_dim,
            clip_extra_context_tokens=text_proj.config.clip_extra_context_tokens, norm_num_groups=c.norm_num_groups,
            learned_variance=c.out_channels == 2 * c.in_channels)
        self.unet, self.text_proj, self.expert = unet, text_proj, None
        return self.eval()

    def base(self) -> "Decoder":
        """This decoder without its high-noise expert (weights shared): what diffusers' layout can hold."""
        from dataclasses import replace

        if self.expert is None:
            return self
        other = Decoder.__new__(Decoder)
        nn.Module.__init__(other)
        other.config = replace(self.config, expert_from=None)
        other.unet, other.text_proj, other.expert = self.unet, self.text_proj, None
        if hasattr(self, "lora_meta"):  # its layers carry that adapter: one per stage still holds
            other.lora_meta = self.lora_meta
        return other.train(self.training)

    @property
    def caption_only(self) -> bool:
        """Trained with every z_i dropped (`--option image_drop=1`): a GLIDE-like decoder of the caption alone."""
        return self.config.image_drop >= 1

    def same_size(self, other: "Decoder") -> bool:
        """The same architecture (what the ablations compare like for like), whatever the training settings."""
        from dataclasses import fields

        kept = {"image_drop", "caption_drop", "dc_mean", "guidance_scale", "loss_options", "v_ramp", "expert_from"}
        return all(getattr(self.config, f.name) == getattr(other.config, f.name)
                   for f in fields(self.config) if f.name not in kept)

    @property
    def null_image_embed(self) -> torch.Tensor:
        return self.text_proj.learned_classifier_free_guidance_embeddings  # (D,)

    def null_image_embeds(self, b: int) -> torch.Tensor:
        """The learned null z_i for b samples (B, D), detached: a view, clone it to keep it."""
        return self.null_image_embed.detach()[None].expand(b, -1)

    def forward(self, x_t, t, image_embed, text_embed, text_hidden, text_mask, image_dropped=None,
                raw: bool = False) -> torch.Tensor:
        """x_t (B,3,H,W), t (B,), z_i (B,D), z_t (B,D), tokens (B,T,D), mask (B,T) bool -> (B,6,H,W): ε, then
        the learned variance's interpolation (GLIDE's v, not the v of `v_ramp`).

        image_dropped (B,) bool: use the learned null embedding for those samples (CFG). With an `expert`
        (config.expert_from), the steps t >= expert_from are its output instead (each with its own null z_i). With config.v_ramp
        the network predicts r = cos φ · ε − sin φ · x0 (`diffusion.ramp_angle`), returned as the ε it
        implies, so that every sampler reads ε; raw=True returns r itself (the training target).
        """
        if self.expert is not None and not raw:
            high = _per_sample(t, len(x_t)) >= self.config.expert_from  # (B,)
            if bool(high.any()):
                args = (x_t, t, image_embed, text_embed, text_hidden, text_mask, image_dropped)
                expert = self.expert(*args).float()
                if bool(high.all()):
                    return expert
                return torch.where(high[:, None, None, None], expert, self._own(*args).float())
        return self._own(x_t, t, image_embed, text_embed, text_hidden, text_mask, image_dropped, raw)

    def _own(self, x_t, t, image_embed, text_embed, text_hidden, text_mask, image_dropped=None, raw=False):
        if image_dropped is not None:
            image_embed = torch.where(image_dropped[:, None], self.null_image_embed[None].to(image_embed.dtype), image_embed)
        context, time_add = self.text_proj(image_embeddings=image_embed, prompt_embeds=text_embed,
                                           text_encoder_hidden_states=text_hidden, do_classifier_free_guidance=False)
        mask = F.pad(text_mask, (self.config.clip_extra_context_tokens, 0), value=True)  # (B, 4 + T)
        out = self.unet(x_t, t, encoder_hidden_states=context, class_labels=time_add, attention_mask=mask).sample
        if self.config.v_ramp is None or raw:
            return out
        theta, phi = self.angles(_per_sample(t, len(x_t)))
        eps = eps_from_rotated(out[:, :3].float(), x_t.float(), theta, phi)
        eps = torch.where(phi[:, None, None, None] > 0, eps, out[:, :3].float())  # below t_a: ε itself, exactly
        return torch.cat([eps, out[:, 3:].float()], 1)

    def angles(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """θ_t and φ_t (B,) of config.v_ramp on the cosine schedule (`diffusion.ramp_angle`)."""
        from unclip.diffusion import cosine_alphas_cumprod, noise_angle, ramp_angle

        if getattr(self, "_alphas_cumprod", None) is None:
            self._alphas_cumprod = cosine_alphas_cumprod().float()
        ac = self._alphas_cumprod.to(t.device)
        theta = noise_angle(ac, t.long())
        return theta, ramp_angle(theta, t, self.config.v_ramp)

    def guided_denoiser(self, image_embeds: torch.Tensor, text, empty, guidance_scale: float):
        """x_t, t -> CFG-combined output; the unconditional half has the learned null z_i and ""."""
        from unclip.clip import TextEncoding
        from unclip.sampling import guided

        b = len(image_embeds)
        pair = TextEncoding.cat(empty.repeat(b), text)
        z_pair = torch.cat([image_embeds, image_embeds])  # the first half dropped to the (each model's) null z_i:
        null = torch.arange(2 * b) < b  # the same numbers as passing the null embedding itself

        def denoise_pair(x, t, cond_only=False):
            if cond_only:
                return self(x, t.expand(len(x)), image_embeds, text.text_embed, text.hidden_states, text.mask)
            return self(x, t.expand(len(x)), z_pair, pair.text_embed, pair.hidden_states, pair.mask, null)

        return guided(denoise_pair, guidance_scale, split=3, interval=self.config.guidance_interval)

    @torch.no_grad()
    def sample(self, image_embeds: torch.Tensor, text, empty, *, steps: int = 25, guidance_scale: float = 8.0,
               sampler: str = "ddpm", eta: float = 0.0, generator: torch.Generator | None = None,
               latents: torch.Tensor | None = None, clip_denoised: bool = True, spacing: str = "trailing",
               noise: torch.Tensor | None = None, progress: str | None = None,
               select: tuple[int, Callable] | None = None) -> torch.Tensor:
        """z_i (B, D) + caption (TextEncoding; `empty` encodes "") -> images (B, 3, S, S) in [-1, 1].

        The unconditional half uses the learned null z_i and the "" caption. `latents`: a given x_T
        (e.g. from `invert`); clip_denoised=False turns off x0 clipping (exact inversion round trips);
        spacing: DDIM's timestep spacing ("leading" to decode an inverted x_T, see `invert`); `noise`:
        the N(0, I) draw (B, 3, S, S) that `start` turns into x_T, e.g. one shared by interpolation frames.
        `select` (after, choose): after that many steps, go on with the rows choose(x0) returns only
        (sampling.Prune); the images returned are those rows'.
        """
        from unclip.sampling import Prune, check_steps, make_scheduler, sample

        check_steps(sampler, steps=steps)  # before the scheduler or `start` sees the count
        denoise = self.guided_denoiser(image_embeds, text, empty, guidance_scale)
        sched = make_scheduler(sampler, "epsilon", 1.0 if clip_denoised else None,
                               learned_variance=self.config.learned_variance, spacing=spacing)
        if latents is not None:
            x, strength = latents.clone(), 1.0
        else:
            x, strength = self.start(len(image_embeds), sched, steps, generator, noise=noise)
        prune = None
        if select is not None:
            after, choose = select
            prune = Prune(after, choose, lambda rows: self.guided_denoiser(image_embeds[rows], text[rows], empty,
                                                                          guidance_scale))
        x = sample(denoise, x, sched, steps, generator, eta=eta, desc=progress, keep_channels=3, strength=strength,
                   prune=prune)
        return x.clamp(-1, 1)

    def shared_noise(self, b: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One N(0, I) draw repeated b times (B, 3, S, S): the `noise` of frames that share a layout."""
        s = self.config.sample_size
        return torch.randn(1, 3, s, s, generator=generator).expand(b, -1, -1, -1).clone()

    def start(self, b: int, sched, steps: int, generator=None, min_alpha_bar: float = 1e-4, noise=None):
        """x_T (B, 3, S, S) and the share of the `steps` timesteps to run from it.

        Standard (no config.dc_mean, or mean_start False): N(0, I) from the first timestep. With the
        training images' mean colour μ: from the first timestep t with ᾱ_t ≥ min_alpha_bar (this drops
        t = 999, where ᾱ = 2.4e-9 and no ε-model's x0 estimate means anything), at the forward
        process's mean colour: x = √ᾱ_t μ + √(1 − ᾱ_t) (ε − mean(ε)). An ε-model learns the mean colour
        of x_t as signal (it is 1 of H·W frequencies of its loss), so the start noise's own mean, ±1/S
        per channel, was drawn as a tinted background; this start gives it the data's mean instead.
        """
        s = self.config.sample_size
        x = torch.randn(b, 3, s, s, generator=generator) if noise is None else noise.float()
        if x.shape != (b, 3, s, s):
            raise ValueError(f"noise must have shape {(b, 3, s, s)}, got {tuple(x.shape)}")
        if self.config.dc_mean is None or not self.mean_start:
            return x, 1.0
        from unclip.sampling import set_timesteps

        ac = sched.alphas_cumprod
        timesteps = set_timesteps(sched, steps)
        keep = int(sum(float(ac[int(t)]) >= min_alpha_bar for t in timesteps))
        if keep < 2 or float(ac[int(timesteps[steps - keep])]) > 0.5:  # too few steps left to draw from the mean
            return x, 1.0  # (e.g. 1 DDIM step, or DDPM's 2 at t = 999, 0): the standard start
        a = ac[int(timesteps[steps - keep])].float()
        mu = torch.tensor(self.config.dc_mean, dtype=x.dtype)[None, :, None, None]
        return a.sqrt() * mu + (1 - a).sqrt() * (x - x.mean((2, 3), keepdim=True)), keep / steps

    @torch.no_grad()
    def invert(self, images: torch.Tensor, image_embeds: torch.Tensor, text, empty, *, steps: int = 25,
               guidance_scale: float = 1.0, fixed_point_iters: int = 0, progress: str | None = None) -> torch.Tensor:
        """DDIM inversion: images (B,3,S,S) in [-1,1] -> x_T such that DDIM (η = 0, same steps,
        same guidance) from (z_i, x_T) returns the images.

        Plain inversion is first order: it takes ε(x_t, t) for ε(x_{t+1}, t+1), which is only
        approximate (worse with guidance > 1). `fixed_point_iters` > 0 re-evaluates ε at the current
        estimate of x_{t+1} that many times per step, which converges towards exact inversion.
        """
        from tqdm.auto import tqdm

        from unclip.sampling import make_scheduler, report_step

        eps_fn = self.guided_denoiser(image_embeds, text, empty, guidance_scale)
        sched = make_scheduler("ddim", spacing="leading")  # decode with spacing="leading" too
        sched.set_timesteps(steps)
        ac = sched.alphas_cumprod
        ts = sched.timesteps.flip(0)  # ascending
        x, a_prev, t_prev = images.float(), torch.tensor(1.0), torch.tensor(0)
        for t in tqdm(ts, desc=progress, disable=progress is None, leave=False):
            a_t = ac[t]
            eps = eps_fn(x, t_prev)[:, :3]
            x_next = self._ddim_move(x, eps, a_prev, a_t)
            for _ in range(fixed_point_iters):
                eps = eps_fn(x_next, t)[:, :3]
                x_next = self._ddim_move(x, eps, a_prev, a_t)
            x, a_prev, t_prev = x_next, a_t, t
            report_step(progress, int((ts <= t).sum()), len(ts))
        return x

    @staticmethod
    def _ddim_move(x, eps, a_from, a_to):
        """Deterministic DDIM update between two noise levels given ε: via the implied x0."""
        x0 = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
        return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps

    def save(self, directory: Path, dtype: torch.dtype = torch.float16) -> None:
        """Diffusers layout: DIR/decoder (UNet2DConditionModel), DIR/text_proj, DIR/decoder_config.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, module in (("decoder", self.unet), ("text_proj", self.text_proj)):
            save_diffusers(module, directory / name, half=dtype == torch.float16)
        (directory / "decoder_config.json").write_text(json.dumps(asdict(self.config), indent=1))
        if self.expert is not None:
            self.expert.save(directory / "decoder_expert", dtype)

    @classmethod
    def load(cls, directory: Path) -> "Decoder":
        directory = Path(directory)
        cfg = json.loads((directory / "decoder_config.json").read_text())
        model = cls(DecoderConfig(**cfg))
        model.load_weights(directory)
        if model.config.expert_from is not None:
            if not (directory / "decoder_expert" / "decoder_config.json").exists():
                raise FileNotFoundError(f"{directory / 'decoder_config.json'} names a high-noise expert (expert_from "
                                        f"{model.config.expert_from}) but {directory / 'decoder_expert'} holds none")
            model.expert = cls.load(directory / "decoder_expert")
        return model.eval()

    def load_weights(self, directory: Path) -> None:
        from diffusers import UNet2DConditionModel
        from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

        unet = load_diffusers_module(UNet2DConditionModel, Path(directory) / "decoder")
        proj = load_diffusers_module(UnCLIPTextProjModel, Path(directory) / "text_proj")
        check_same_config(unet, self.unet, Path(directory) / "decoder")
        check_same_config(proj, self.text_proj, Path(directory) / "text_proj")
        self.unet.load_state_dict({k: v.float() for k, v in unet.state_dict().items()})
        self.text_proj.load_state_dict({k: v.float() for k, v in proj.state_dict().items()})


def _per_sample(t: torch.Tensor, b: int) -> torch.Tensor:
    """A timestep given once (a 0-d tensor, as the samplers pass it) or per sample, as (B,)."""
    return t.expand(b) if t.ndim else t.repeat(b)


def clip_consistency(clip, x0_pred: torch.Tensor, z_i: torch.Tensor) -> torch.Tensor:
    """Cosine (B,) between the CLIP stage's embedding of the predicted x0 (B, 3, H, W) and the z_i
    (B, D) the decoder was asked to draw. The ε loss alone rewards pixels, and a small decoder spends
    its capacity there: its samples from a real image's z_i came back at a cosine of 0.42 with it
    (0.04 between different images). Gradients reach the decoder through x0_pred only (`clip` frozen).
    The task weighs 1 - cos by sqrt(SNR), capped at 1: x0_pred = (x_t - sqrt(1 - ᾱ) ε̂) / sqrt(ᾱ) moves
    by 1/sqrt(SNR) per unit of ε̂, so every noise level below SNR 1 pulls on ε̂ alike, and above it
    x0_pred is near x0, whose embedding is z_i: the term fades by itself."""
    return F.cosine_similarity(clip.encode_image(x0_pred).float(), z_i.float(), dim=-1)


class DecoderTask(ConditionedTask):
    """Training task for the decoder. Options: clip=DIR (CLIP stage), min_snr_gamma (default 5),
    high_noise_floor (default 0: off; the recipe uses 0.05, see `high_noise_weight`), dc_weight
    (default 0: off; the recipe uses 0.002: the mean-colour error `dc_error`, where SNR < high_noise_floor,
    with the high-noise weight), dropout (default 0: the p of every dropout in the UNet, its ResNet
    blocks' (as improved DDPM regularises small datasets) and its attention outputs', while training;
    sampling runs in eval mode without it), embed_noise
    (default 0: Gaussian noise of this expected norm added to each training z_i, then rescaled to
    its norm, so that a training image's exact z_i stops being a key the decoder can memorise it by
    and z_i near, not at, the data — the prior's samples — decode as well; cf. the noise augmentation
    of the image embedding in Stable unCLIP), clip_weight (default 0: off; the weight of `clip_consistency`:
    the CLIP stage's embedding of the predicted x0 pulled towards the image's z_i, so that the decoder draws
    what z_i encodes rather than only what the pixel loss rewards), v_ramp=[t_a, t_b] (the parameterization
    `DecoderConfig.v_ramp`: the network predicts ε below t_a as before and v above t_b, whose x0 error is not
    multiplied by tan θ; a fine-tune from an ε model keeps the low-noise steps exactly and relearns the noisy
    ones, where the loss is the v-MSE, an x0-space weight ~1 instead of high_noise_floor's), focus_share with
    focus_from and focus_to (default 0, 1000; focus_share 0: off; that share of each batch's timesteps is drawn
    from focus_from..focus_to - 1 instead of 0..999, to spend a fine-tune's steps where it changes the most, or
    where the network serves: `unclip finetune` trains a decoder with an expert on t < expert_from only and
    the expert on t >= expert_from). Options the run does not set come from the starting model's
    `loss_options` (a fine-tune keeps the objective its model was trained with), and the exported
    config records the ones used."""

    LOSS_OPTIONS = {"min_snr_gamma": 5.0, "high_noise_floor": 0.0, "dc_weight": 0.0, "dropout": 0.0, "embed_noise": 0.0,
                    "clip_weight": 0.0, "focus_from": 0.0, "focus_to": 1000.0, "focus_share": 0.0}

    def __init__(self, cfg, conditioning=None):
        from unclip.conditioning import Conditioning, clip_dir_for, stage_config
        from unclip.diffusion import Schedule

        self.cfg, self.config = cfg, stage_config(cfg, "decoder", DecoderConfig, "decoder_config.json")
        clip_dir = clip_dir_for(cfg)
        self.cond = conditioning or Conditioning(cfg.data, "train", clip_dir)
        if self.config.dc_mean is None:  # the mean colour the sampler starts from (Decoder.start)
            import numpy as np

            self.config.dc_mean = tuple(np.asarray(self.cond.images).reshape(-1, 3).mean(0, dtype=np.float64) / 127.5 - 1)
        self._set_drop_rates(cfg.options)
        self._set_v_ramp(cfg.options)
        self.config.expert_from = None  # a run trains one network; a starting model's expert is not part of it
        self.model = Decoder(self.config)
        self.clip_dir = self.cond.clip_dir
        self.schedule = Schedule()
        self._set_loss_options({**(self.config.loss_options or {}), **cfg.options})
        self._heldout = None

    def _set_loss_options(self, given: dict) -> None:
        opts = {k: float(given.get(k, default)) for k, default in self.LOSS_OPTIONS.items()}
        self.config.loss_options = opts  # exported with the model
        self.gamma, self.high_noise_floor, self.dc_weight = opts["min_snr_gamma"], opts["high_noise_floor"], opts["dc_weight"]
        if not 0 <= opts["dropout"] < 1:
            raise ValueError(f"--option dropout must be in [0, 1), not {opts['dropout']}")
        if not 0 <= opts["embed_noise"] <= 1:
            raise ValueError(f"--option embed_noise must be in [0, 1] (the noise's norm against z_i's), not {opts['embed_noise']}")
        self.embed_noise = opts["embed_noise"]
        if opts["clip_weight"] < 0:
            raise ValueError(f"--option clip_weight must be >= 0, not {opts['clip_weight']}")
        self.clip_weight = opts["clip_weight"]
        self.focus_from, self.focus_to, self.focus_share = int(opts["focus_from"]), int(opts["focus_to"]), opts["focus_share"]
        if not 0 <= self.focus_from < self.focus_to <= 1000 or not 0 <= self.focus_share <= 1:
            raise ValueError(f"--option focus_from and focus_to must satisfy 0 <= focus_from < focus_to <= 1000 and "
                             f"focus_share be in [0, 1], not {opts['focus_from']}, {opts['focus_to']} and {opts['focus_share']}")
        if self.clip_weight:
            self.cond.clip.eval().requires_grad_(False)  # frozen: the loss reads it, never trains it
        for m in self.model.unet.modules():  # ResNet blocks' and attention outputs' nn.Dropout (p = 0 by default)
            if isinstance(m, nn.Dropout):
                m.p = opts["dropout"]

    def _set_drop_rates(self, given: dict) -> None:
        """Classifier-free guidance's drop rates, from --option image_drop / caption_drop over the starting
        model's. image_drop=1 trains a caption-only (GLIDE-like) decoder: z_i is always the null embedding."""
        for key in ("image_drop", "caption_drop"):
            if key in given:
                p = float(given[key])
                if not 0 <= p <= 1:
                    raise ValueError(f"--option {key} must be in [0, 1], not {given[key]}")
                setattr(self.config, key, p)

    def _set_v_ramp(self, given: dict) -> None:
        """--option v_ramp=[t_a, t_b] (or null: plain ε) over the starting model's parameterization."""
        if "v_ramp" in given:
            from dataclasses import replace

            self.config.v_ramp = replace(self.config, v_ramp=given["v_ramp"]).v_ramp  # validated there

    def checkpoint_state(self) -> dict:
        return {"loss_options": self.config.loss_options, "v_ramp": self.config.v_ramp,
                "drop_rates": {"image_drop": self.config.image_drop, "caption_drop": self.config.caption_drop}}

    def restore_state(self, state: dict) -> None:
        """On resume: the loss the run was training with (its checkpoint's record; before there was one,
        the run's own options over the defaults), with the options given to this run on top: a starting
        model whose recorded options changed since cannot change a resumed run's loss."""
        saved = state.get("loss_options") or state.get("config", {}).get("options", {})
        self._set_loss_options({**saved, **self.cfg.options})
        self._set_drop_rates({**state.get("drop_rates", {}), **self.cfg.options})
        self._set_v_ramp({**({"v_ramp": state["v_ramp"]} if "v_ramp" in state else {}), **self.cfg.options})

    def batch(self, indices, gens, device) -> dict:
        from unclip.diffusion import draw_noise, draw_timesteps, draw_uniform

        caps = self.cond.pick_captions(indices, gens)
        caption_dropped = draw_uniform(gens) < self.config.caption_drop
        image_dropped = draw_uniform(gens) < self.config.image_drop
        t = draw_timesteps(gens, self.schedule.num_timesteps)
        if self.focus_share:  # that share from focus_from..focus_to - 1 (extra draws only when on: old runs replay)
            focused = draw_uniform(gens) < self.focus_share
            t = torch.where(focused, self.focus_from + draw_timesteps(gens, self.focus_to - self.focus_from), t)
        s = self.config.sample_size
        noise = draw_noise(gens, (3, s, s))
        z_t, hidden, mask = self.cond.text(caps, caption_dropped)
        z_i = clean = self.cond.image_embeds(indices)  # (B, D)
        if self.embed_noise:
            d, norm = z_i.shape[-1], z_i.norm(dim=-1, keepdim=True)  # (B, 1)
            noisy = z_i + draw_noise(gens, (d,)) * (self.embed_noise * norm / d ** 0.5)
            z_i = noisy * (norm / noisy.norm(dim=-1, keepdim=True))
        b = {"x0": self.cond.pixels(indices, s), "t": t, "noise": noise, "image_embed": z_i,
             "text_embed": z_t, "text_hidden": hidden, "text_mask": mask, "image_dropped": image_dropped}
        if self.clip_weight:
            b["clip_target"] = clean  # the image's own z_i, without embed_noise
        return {k: v.to(device) for k, v in b.items()}

    def loss(self, model: "Decoder", batch: dict):
        from unclip.diffusion import dc_error, high_noise_weight, min_snr_weight, rotated_target, vlb_loss

        sched = self.schedule.to(batch["x0"].device)
        x_t = sched.q_sample(batch["x0"], batch["t"], batch["noise"])
        ramp = self.config.v_ramp is not None
        out = model(x_t, batch["t"], batch["image_embed"], batch["text_embed"], batch["text_hidden"],
                    batch["text_mask"], batch["image_dropped"], raw=ramp).float()
        eps, v = out[:, :3], out[:, 3:]
        snr = sched.snr(batch["t"])
        high_weight = high_noise_weight(snr, self.high_noise_floor)
        weight = min_snr_weight(snr, self.gamma) if self.gamma else torch.ones_like(snr)
        weight = torch.maximum(weight, high_weight)
        if ramp:  # the loss on r = cos φ ε − sin φ x0: the ε loss below t_a, the v loss (weight 1) above
            theta, phi = self.model.angles(batch["t"])
            mse = (eps - rotated_target(batch["noise"], batch["x0"], phi)).pow(2).flatten(1).mean(1)  # (B,)
            weight = torch.where(phi > 0, torch.ones_like(weight), weight)
            eps = eps_from_rotated(eps, x_t, theta, phi)  # for the terms below, which read ε
        err = eps - batch["noise"]
        if not ramp:
            mse = err.pow(2).flatten(1).mean(1)  # (B,)
        logs = {"mse": mse.mean().detach()}
        loss = weight * mse
        if self.dc_weight and self.high_noise_floor:  # only where the mean colour of x_t is noise enough to learn
            dc = dc_error(err)
            high = snr < self.high_noise_floor
            logs["dc_high_noise"] = dc[high].mean().detach() if high.any() else dc.new_zeros(())
            loss = loss + torch.where(high, self.dc_weight * high_weight * dc, 0.0)
        if self.clip_weight:
            x0_pred = sched.predict_x0(x_t, batch["t"], eps).clamp(-1, 1)
            clip = self.cond.clip.to(x0_pred.device)
            cos = clip_consistency(clip, x0_pred, batch["clip_target"])
            kept = ~batch["image_dropped"]  # a dropped z_i is the null embedding: nothing to match
            logs["clip_cos"] = cos[kept].mean().detach() if kept.any() else cos.new_zeros(())
            loss = loss + torch.where(kept, self.clip_weight * snr.sqrt().clamp(max=1) * (1 - cos), 0.0)
        loss = loss.mean()
        if self.config.learned_variance:
            vb = vlb_loss(sched, batch["x0"], x_t, batch["t"], eps, v).mean()
            loss = loss + vb
            logs["vb"] = vb.detach()
        return loss, logs

    def static_shapes(self) -> None:
        """Before torch.compile: every batch's caption tokens padded to one width (masked: same loss)."""
        self.cond.pad_to = self.cond.longest()

    def eval_model(self) -> "Decoder":
        return Decoder(self.config)

    def heldout_span(self) -> tuple[int, int]:
        """The timesteps the held-out loss spreads over, [lo, hi)."""
        return (self.focus_from, self.focus_to) if self.focus_share >= 1 else (0, self.schedule.num_timesteps)

    def heldout_measure(self) -> str | None:
        """Recorded with a checkpoint's best held-out loss: a resumed run compares like with like."""
        lo, hi = self.heldout_span()
        return None if (lo, hi) == (0, self.schedule.num_timesteps) else f"t in [{lo}, {hi})"

    @torch.no_grad()
    def heldout_loss(self, model: "Decoder", n: int = 64) -> float:
        """ε-MSE on held-out images (canonical captions, no dropout; a caption-only decoder's null z_i)
        at fixed timesteps and noise: spread over 0..999, or over focus_from..focus_to - 1 when the run
        draws every t there (focus_share 1: a high-noise expert, or a decoder that leaves them to one),
        so the loss follows what the run trains and not the steps it gives up."""
        if self._heldout is None:
            b = self.cond.heldout().fixed_batch(n, size=self.config.sample_size)
            g = torch.Generator().manual_seed(1234)
            lo, hi = self.heldout_span()
            b["t"] = torch.linspace(lo, hi - 1, len(b["x0"])).long()
            b["noise"] = torch.randn(b["x0"].shape, generator=g)
            self._heldout = b
        b = self._heldout
        model.eval()
        x_t = self.schedule.q_sample(b["x0"], b["t"], b["noise"])
        dropped = torch.ones(len(x_t), dtype=torch.bool) if model.caption_only else None  # it never sees a z_i
        eps = model(x_t, b["t"], b["image_embed"], b["text_embed"], b["text_hidden"], b["text_mask"], dropped)[:, :3]
        model.train()
        return float((eps - b["noise"]).pow(2).mean())

    @torch.no_grad()
    def preview(self, model: "Decoder", path: Path, n: int = 8) -> None:
        """Held-out images (top row) and their reconstructions from z_i + caption (bottom row)."""
        from unclip.clip import TextEncoding
        from unclip.images import grid, to_output

        self.heldout_loss(model)  # builds the fixed held-out batch
        b = {k: v[:n] for k, v in self._heldout.items()}
        empty = TextEncoding(self.cond.empty_text_embed[None], self.cond.empty_tokens[None], torch.ones(1, len(self.cond.empty_tokens), dtype=torch.bool))
        text = TextEncoding(b["text_embed"], b["text_hidden"], b["text_mask"])
        model.eval()
        scale = self.config.guidance_scale or 3.0  # the model's own default when it records one
        z_i = b["image_embed"]  # (n, D); a caption-only decoder draws from the caption alone:
        z_i = model.null_image_embeds(len(z_i)) if model.caption_only else z_i
        out = model.sample(z_i, text, empty, steps=25, guidance_scale=scale, sampler="ddim",
                           generator=torch.Generator().manual_seed(0))
        path.parent.mkdir(parents=True, exist_ok=True)
        grid(to_output(torch.cat([b["x0"], out]), "pil"), cols=len(out)).save(path)

    def export(self, model: "Decoder", directory: Path) -> None:
        model.save(directory)

    def load_weights(self, directory: Path) -> None:
        self.model.load_weights(directory)
