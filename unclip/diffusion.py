"""What every diffusion stage shares: the cosine schedule, q_sample, loss weighting, learned variance.

The schedule is diffusers' (`squaredcos_cap_v2`, 1000 steps), so training and the diffusers
samplers agree on every alpha. Written here only what unCLIP's stages need beyond it: per-sample
draws from keyed generators, min-SNR weighting, and GLIDE's learned-variance (L_vlb) term.
"""

import math

import torch

NUM_TRAIN_TIMESTEPS = 1000


def cosine_alphas_cumprod(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """ᾱ_t of the cosine schedule, exactly as diffusers' schedulers compute it (float64)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=num_timesteps, beta_schedule="squaredcos_cap_v2")
    return sched.alphas_cumprod.double()


class Schedule:
    """ᾱ_t and the quantities derived from it, on one device, float32."""

    def __init__(self, num_timesteps: int = NUM_TRAIN_TIMESTEPS, device="cpu"):
        ac = cosine_alphas_cumprod(num_timesteps)
        prev = torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
        betas = 1 - ac / prev
        self.num_timesteps = num_timesteps
        self.alphas_cumprod = ac.float().to(device)
        self.betas = betas.float().to(device)
        post_var = betas * (1 - prev) / (1 - ac)
        # log of the posterior variance, with t=0 clipped to t=1's value (as in improved DDPM)
        self.posterior_log_variance = torch.log(torch.cat([post_var[1:2], post_var[1:]])).float().to(device)
        self.posterior_mean_coef1 = (betas * prev.sqrt() / (1 - ac)).float().to(device)
        self.posterior_mean_coef2 = ((1 - prev) * (1 - betas).sqrt() / (1 - ac)).float().to(device)
        self.log_betas = torch.log(betas).float().to(device)

    def to(self, device) -> "Schedule":
        for k, v in vars(self).items():
            if torch.is_tensor(v):
                setattr(self, k, v.to(device))
        return self

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        ac = self.alphas_cumprod[t]
        return ac / (1 - ac)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε."""
        ac = _bcast(self.alphas_cumprod[t], x0)
        return ac.sqrt() * x0 + (1 - ac).sqrt() * noise

    def predict_x0(self, x_t, t, eps):
        ac = _bcast(self.alphas_cumprod[t], x_t)
        return (x_t - (1 - ac).sqrt() * eps) / ac.sqrt()

    def q_posterior(self, x0, x_t, t):
        """Mean and log-variance of q(x_{t-1} | x_t, x0)."""
        mean = _bcast(self.posterior_mean_coef1[t], x_t) * x0 + _bcast(self.posterior_mean_coef2[t], x_t) * x_t
        return mean, _bcast(self.posterior_log_variance[t], x_t)


def noise_angle(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """θ_t (B,) with cos θ = √ᾱ_t, sin θ = √(1 − ᾱ_t): x_t = cos θ · x0 + sin θ · ε."""
    return torch.atan2((1 - alphas_cumprod[t]).sqrt(), alphas_cumprod[t].sqrt())


def ramp_angle(theta: torch.Tensor, t: torch.Tensor, ramp: tuple[int, int]) -> torch.Tensor:
    """φ_t (B,) of the v-ramp parameterization: 0 for t <= t_a, θ_t for t >= t_b, θ_t · (t − t_a)/(t_b − t_a)
    between. The network then predicts r = cos φ · ε − sin φ · x0: ε below t_a (unchanged), v above t_b."""
    t_a, t_b = ramp
    share = ((t.float() - t_a) / max(t_b - t_a, 1)).clamp(0, 1) if t_b > t_a else (t >= t_a).float()
    return theta * share


def rotated_target(eps: torch.Tensor, x0: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """r = cos φ · ε − sin φ · x0 (φ = 0: ε; φ = θ: v, Salimans & Ho 2022)."""
    return _bcast(phi.cos(), eps) * eps - _bcast(phi.sin(), eps) * x0


def eps_from_rotated(r: torch.Tensor, x_t: torch.Tensor, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """ε from a prediction r = cos φ · ε − sin φ · x0 and x_t = cos θ · x0 + sin θ · ε:
    ε = (cos θ · r + sin φ · x_t) / cos(θ − φ). With φ = θ the implied x0 = cos θ · x_t − sin θ · r has an
    error of sin θ <= 1 times r's, where an ε prediction's is multiplied by tan θ (12.8 at t = 950, 50 at 990)."""
    cos_t, sin_p, cos_d = (_bcast(v, r) for v in (theta.cos(), phi.sin(), (theta - phi).cos()))
    return (cos_t * r + sin_p * x_t) / cos_d


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def draw_timesteps(gens: list[torch.Generator], num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """One uniform timestep per sample, from that sample's generator: (B,) int64."""
    return torch.stack([torch.randint(num_timesteps, (), generator=g) for g in gens])


def draw_noise(gens: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """One standard normal tensor of `shape` per sample: (B, *shape)."""
    return torch.stack([torch.randn(shape, generator=g) for g in gens])


def draw_uniform(gens: list[torch.Generator]) -> torch.Tensor:
    """One U(0, 1) number per sample: (B,), for dropout decisions."""
    return torch.stack([torch.rand((), generator=g) for g in gens])


def min_snr_weight(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ weighting for ε-prediction (Hang et al. 2023): min(SNR, γ) / SNR."""
    return torch.clamp(snr, max=gamma) / snr


def high_noise_weight(snr: torch.Tensor, floor: float, cap: float = 20.0) -> torch.Tensor:
    """ε-loss weight floor/SNR where SNR < floor (capped): an x0-space loss of weight `floor` there.

    Under a plain ε loss the high-noise steps carry x0 errors with weight SNR (~0.007 at t = 950 of
    the cosine schedule), so the model learns late what sampling decides first: the layout (white
    background, one centred object). Combine with the min-SNR weight by max(); 0 turns it off.
    """
    if not floor:
        return torch.zeros_like(snr)
    return torch.clamp(floor / snr, max=cap)


def dc_error(err: torch.Tensor) -> torch.Tensor:
    """Per-sample squared error of the per-channel spatial means of an ε error (B, C, H, W) -> (B,),
    scaled by H·W so that iid errors give it the size of their MSE.

    The ε MSE counts an image's mean colour as 1 of H·W frequencies, so the decoder learned to read
    the mean of x_t as signal at every t. Near t = T that is wrong, and sampling divides it by √ᾱ_t
    (~5e-5 at t = 999): a random tint of the starting noise became a saturated background colour.
    Adding this term weights the mean as much as everything else; a positive-definite reweighting of
    the ε error keeps E[ε | x_t] as the minimiser, so it changes what is learned first, not the target.
    """
    h, w = err.shape[-2:]
    return err.float().mean((2, 3)).pow(2).mean(1) * (h * w)


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """log p(x) of 8-bit data under a Gaussian discretised to bins of width 2/255 (improved DDPM)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))


def learned_range_log_variance(schedule: Schedule, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """GLIDE/improved-DDPM: interpolate log β_t and log β̃_t with v ∈ [-1, 1] (diffusers' `learned_range`)."""
    frac = (v + 1) / 2
    return frac * _bcast(schedule.log_betas[t], v) + (1 - frac) * _bcast(schedule.posterior_log_variance[t], v)


def vlb_loss(schedule: Schedule, x0, x_t, t, eps_pred, v) -> torch.Tensor:
    """Per-sample L_vlb term (bits/dim) for the learned variance; the mean is detached so it trains only v."""
    true_mean, true_logvar = schedule.q_posterior(x0, x_t, t)
    x0_pred = schedule.predict_x0(x_t, t, eps_pred.detach())  # unclipped, as in improved DDPM training
    model_mean, _ = schedule.q_posterior(x0_pred, x_t, t)
    model_logvar = learned_range_log_variance(schedule, t, v)
    kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar).flatten(1).mean(1) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).flatten(1).mean(1) / math.log(2.0)
    return torch.where(t == 0, nll, kl)
