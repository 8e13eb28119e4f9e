"""Upsamplers (64→256, 256→1024): diffusion UNets with only convolutions, no caption.

The low-resolution image is upsampled (bicubic) to the output size and concatenated to the noisy
image (`UNet2DModel` with in_channels = 6, as Karlo's super-res models). During training the
condition is corrupted (Gaussian blur for the first stage, a BSR-style chain for the second) and
the model sees random crops a quarter of the target size; at inference it runs on the full image,
which a convolution-only network allows.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from unclip.weights import check_same_config, load_diffusers_module, save_diffusers


@dataclass
class UpsamplerConfig:
    factor: int = 4
    sample_size: int = 256  # output side at inference
    train_crop: int = 64  # training crops (a quarter of the target side)
    block_out_channels: tuple[int, ...] = (16, 32, 64, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    degradation: str = "blur"  # "blur" | "bsr"
    strength: float = 1.0  # default inference strength (1: from pure noise; below: from the noised bicubic image)

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)  # JSON presets and configs hold lists


class Upsampler(nn.Module):
    def __init__(self, config: UpsamplerConfig):
        super().__init__()
        from diffusers import UNet2DModel

        self.config = config
        n = len(config.block_out_channels)
        self.unet = UNet2DModel(
            sample_size=config.sample_size, in_channels=6, out_channels=3,
            down_block_types=("ResnetDownsampleBlock2D",) * n, up_block_types=("ResnetUpsampleBlock2D",) * n,
            block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
            add_attention=False, norm_num_groups=config.norm_num_groups,
        )

        self.last_unet = None  # Karlo's second copy, used for the last step only (super_res_last)

    @classmethod
    def wrap(cls, unet, last_unet=None, factor: int = 4) -> "Upsampler":
        """Existing diffusers UNet2DModels (Karlo's super_res_first and super_res_last), weights shared."""
        c = unet.config
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.config = UpsamplerConfig(factor=factor, sample_size=c.sample_size, block_out_channels=c.block_out_channels,
                                      layers_per_block=c.layers_per_block, norm_num_groups=c.norm_num_groups)
        self.unet, self.last_unet = unet, last_unet
        return self.eval()

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, low_res_upsampled: torch.Tensor, last: bool = False) -> torch.Tensor:
        """x_t (B,3,H,W), t (B,), upsampled condition (B,3,H,W) -> predicted ε (B,3,H,W)."""
        unet = self.last_unet if last and self.last_unet is not None else self.unet
        return unet(torch.cat([x_t, low_res_upsampled], dim=1), t).sample

    @torch.no_grad()
    def sample(self, images: torch.Tensor, *, steps: int = 7, sampler: str = "ddim", strength: float | None = None,
               generator: torch.Generator | None = None, progress: str | None = None) -> torch.Tensor:
        """Low-resolution images (B, 3, s, s) in [-1, 1] -> (B, 3, f·s, f·s).

        strength 1 starts from pure noise (as Karlo and diffusers); below 1, from the bicubic
        upsampling noised to the matching step, running only the last steps·strength steps. None: the
        model's own default (config.strength, chosen by measurement when it was trained)."""
        from unclip.degrade import upsample
        from unclip.sampling import make_scheduler, sample, truncated_timesteps

        strength = self.config.strength if strength is None else strength
        size = images.shape[-1] * self.config.factor
        cond = upsample(images, size)
        x = torch.randn(len(images), 3, size, size, generator=generator)
        sched = make_scheduler(sampler, "epsilon", 1.0)
        ts = truncated_timesteps(sched, steps, strength)
        if strength < 1:
            ac = sched.alphas_cumprod[ts[0]]
            x = ac.sqrt() * cond.clamp(-1, 1) + (1 - ac).sqrt() * x
        last_t = ts[-1]
        x = sample(lambda x, t: self(x, t.expand(len(x)), cond, last=bool(t == last_t)), x, sched, steps, generator,
                   desc=progress, strength=strength)
        return x.clamp(-1, 1)

    def save(self, directory: Path, name: str = "super_res_first", dtype: torch.dtype = torch.float16) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_diffusers(self.unet, directory / name, half=dtype == torch.float16)
        (directory / f"{name}_config.json").write_text(json.dumps(asdict(self.config), indent=1))

    @classmethod
    def load(cls, directory: Path, name: str = "super_res_first") -> "Upsampler":
        cfg = json.loads((Path(directory) / f"{name}_config.json").read_text())
        model = cls(UpsamplerConfig(**cfg))
        model.load_weights(directory, name)
        return model.eval()

    def load_weights(self, directory: Path, name: str = "super_res_first") -> None:
        from diffusers import UNet2DModel

        unet = load_diffusers_module(UNet2DModel, Path(directory) / name)
        check_same_config(unet, self.unet, Path(directory) / name, ignore=("sample_size",))  # trained on crops
        self.unet.load_state_dict({k: v.float() for k, v in unet.state_dict().items()})


class UpsamplerTask:
    """Training task for an upsampler on artwork that is natively at least the target size.

    Options: min_snr_gamma (default 5).
    """

    def __init__(self, cfg):
        from unclip.diffusion import Schedule
        from unclip.embed import image_pack
        from unclip.presets import load_preset

        p = load_preset("upsampler", cfg.preset)
        self.cfg, self.config = cfg, UpsamplerConfig(**p)
        self.model = Upsampler(self.config)
        size = self.config.sample_size
        self.images, _ = image_pack(cfg.data, "train", resolution=size, min_native_size=size)
        if len(self.images) == 0:
            raise ValueError(f"no training images of native size >= {size} px in {cfg.data}")
        self.schedule = Schedule()
        self.gamma = float(cfg.options.get("min_snr_gamma", 5.0))
        self._heldout = None

    def __len__(self) -> int:
        return len(self.images)

    def _crops(self, images, indices, gens) -> torch.Tensor:
        c, size = self.config.train_crop, self.config.sample_size
        out = []
        for i, g in zip(indices, gens):
            y, x = (int(v) for v in torch.randint(size - c + 1, (2,), generator=g))
            out.append(np.asarray(images[i][y:y + c, x:x + c]))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # (B, 3, c, c)

    def condition(self, hr: torch.Tensor, gens) -> torch.Tensor:
        from unclip.degrade import DEGRADATIONS, upsample

        low = DEGRADATIONS[self.config.degradation](hr, self.config.factor, gens)
        return upsample(low, hr.shape[-1])

    def batch(self, indices, gens, device) -> dict:
        from unclip.diffusion import draw_noise, draw_timesteps

        hr = self._crops(self.images, indices, gens)
        cond = self.condition(hr, gens)
        t = draw_timesteps(gens, self.schedule.num_timesteps)
        noise = draw_noise(gens, tuple(hr.shape[1:]))
        return {k: v.to(device) for k, v in {"x0": hr, "cond": cond, "t": t, "noise": noise}.items()}

    def loss(self, model: Upsampler, batch: dict):
        from unclip.diffusion import min_snr_weight

        sched = self.schedule.to(batch["x0"].device)
        x_t = sched.q_sample(batch["x0"], batch["t"], batch["noise"])
        eps = model(x_t, batch["t"], batch["cond"]).float()
        mse = (eps - batch["noise"]).pow(2).flatten(1).mean(1)
        weight = min_snr_weight(sched.snr(batch["t"]), self.gamma) if self.gamma else torch.ones_like(mse)
        return (weight * mse).mean(), {"mse": mse.mean().detach()}

    def static_shapes(self) -> None:
        """Before torch.compile: nothing to do (fixed-size crops, no text)."""

    def eval_model(self) -> Upsampler:
        return Upsampler(self.config)

    @torch.no_grad()
    def heldout_loss(self, model: Upsampler, n: int = 32) -> float:
        from unclip.embed import image_pack
        from unclip.train import sample_generator

        if self._heldout is None:
            size = self.config.sample_size
            images, _ = image_pack(self.cfg.data, "heldout_images", resolution=size, min_native_size=size)
            idx = list(range(min(n, len(images))))
            gens = [sample_generator(1234, 0, i) for i in idx]
            hr = self._crops(images, idx, gens)
            g = torch.Generator().manual_seed(1234)
            self._heldout = {"x0": hr, "cond": self.condition(hr, gens), "noise": torch.randn(hr.shape, generator=g),
                             "t": torch.linspace(0, self.schedule.num_timesteps - 1, len(idx)).long()}
        b = self._heldout
        model.eval()
        x_t = self.schedule.q_sample(b["x0"], b["t"], b["noise"])
        loss = float((model(x_t, b["t"], b["cond"]) - b["noise"]).pow(2).mean())
        model.train()
        return loss

    @torch.no_grad()
    def preview(self, model: Upsampler, path: Path, n: int = 6) -> None:
        """Held-out full images: the target (top), bicubic from 1/factor (middle), the model's 7 DDIM steps (bottom)."""
        from unclip.clip_task import uint8_to_tensor
        from unclip.degrade import downsample, upsample
        from unclip.embed import image_pack
        from unclip.images import grid, to_output

        size = self.config.sample_size
        images, _ = image_pack(self.cfg.data, "heldout_images", resolution=size, min_native_size=size)
        hr = uint8_to_tensor(np.asarray(images[:n]))
        low = downsample(hr, self.config.factor)
        model.eval()
        out = model.sample(low, steps=7, generator=torch.Generator().manual_seed(0))
        model.train()
        path.parent.mkdir(parents=True, exist_ok=True)
        grid(to_output(torch.cat([hr, upsample(low, size).clamp(-1, 1), out]), "pil"), cols=len(hr)).save(path)

    def export(self, model: Upsampler, directory: Path) -> None:
        model.save(directory, "super_res_first")

    def load_weights(self, directory: Path) -> None:
        self.model.load_weights(directory, "super_res_first")
