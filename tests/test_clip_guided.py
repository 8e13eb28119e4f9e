import pytest
import torch

import unclip
from unclip.clip_guided import random_cutouts, spherical_distance


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return unclip.load(tiny_model_dir)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_full_size_cutouts_are_the_image_or_its_mirror_and_pass_gradients():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    cuts = random_cutouts(x, 6, 8, _gen(), min_scale=1.0, noise=0.0)  # (12, 3, 8, 8)
    assert cuts.shape == (12, 3, 8, 8)
    for i, c in enumerate(cuts):
        src = x[i // 6]
        assert torch.allclose(c, src, atol=1e-5) or torch.allclose(c, src.flip(-1), atol=1e-5)
    mirrored = sum(not torch.allclose(c, x[i // 6], atol=1e-5) for i, c in enumerate(cuts))
    assert 0 < mirrored < 12
    cuts.sum().backward()
    assert x.grad.abs().sum() > 0
    same = random_cutouts(x.detach(), 6, 4, _gen(1))
    torch.testing.assert_close(same, random_cutouts(x.detach(), 6, 4, _gen(1)))  # seeded


def test_spherical_distance():
    a = torch.nn.functional.normalize(torch.randn(3, 5), dim=-1)
    torch.testing.assert_close(spherical_distance(a, a), torch.zeros(3))
    e = torch.eye(2)
    torch.testing.assert_close(spherical_distance(e[:1], e[1:]), torch.tensor([2 * (torch.pi / 4) ** 2]))  # 90°
    torch.testing.assert_close(spherical_distance(a, -a), torch.full((3,), 2 * (torch.pi / 2) ** 2), atol=1e-2, rtol=0)


def test_scale_zero_is_the_decoder_with_the_null_image_embedding(pipe):
    out = pipe.clip_guided("red heart", 2, steps=4, clip_guidance_scale=0, upsample=False, generator=_gen(),
                           output_type="pt")
    text, empty = pipe.encode_prompt(["red heart"])
    text = text.repeat(2)
    null = pipe.decoder.null_image_embed[None].expand(2, -1)
    ref = pipe.decoder.sample(null, text, empty, steps=4, guidance_scale=pipe.default_decoder_guidance(), sampler="ddim",
                              generator=_gen())  # the model's own caption guidance, as every other command
    torch.testing.assert_close(out.images, (ref + 1) / 2)


class _ZeroEpsDecoder(torch.nn.Module):
    """Predicts ε = 0, so x̂0 = x_t / √ᾱ: the CLIP-guided ε then moves x̂0 straight down the CLIP loss."""

    null_image_embed = torch.zeros(384)

    def guided_denoiser(self, image_embeds, text, empty, guidance_scale):
        return lambda x, t: torch.zeros(len(x), 6, *x.shape[2:])


def test_the_guided_eps_moves_the_clean_image_down_the_clip_loss(pipe):
    from unclip.clip_guided import clip_guided_denoiser
    from unclip.sampling import make_scheduler

    ac = make_scheduler("ddim").alphas_cumprod
    text, empty = pipe.encode_prompt(["red heart"])
    t = torch.tensor(500)
    x = torch.randn(1, 3, 16, 16, generator=_gen(1)) * 0.5

    def loss_of(eps, seed=0):  # the CLIP loss of the clean image eps implies, on the same cut-outs
        x0 = (x - (1 - ac[t]).sqrt() * eps[:, :3]) / ac[t].sqrt()
        z = pipe.clip.encode_image(random_cutouts(x0, 4, pipe.clip.image_size, _gen(seed)))
        return float(spherical_distance(z, text.text_embed.repeat(4, 1)).sum())

    losses = []
    for scale in (0.0, 1.0, 3.0):
        f = clip_guided_denoiser(_ZeroEpsDecoder(), pipe.clip, text, empty, ac, clip_guidance_scale=scale, cutn=4,
                                 generator=_gen(0))
        losses.append(loss_of(f(x, t)))
    assert losses[0] > losses[1] > losses[2], losses


def test_clip_guided_images_are_seeded_and_differ_from_unguided(pipe):
    kw = dict(steps=3, cutn=2, upsample=False, output_type="pt")
    a, b, c = (pipe.clip_guided("red heart", 2, clip_guidance_scale=s, generator=_gen(), **kw) for s in (100.0, 100.0, 0.0))
    torch.testing.assert_close(a.images, b.images)
    assert not torch.allclose(a.images, c.images)
    assert a.image_embeds.shape == (2, pipe.clip.embed_dim)


def test_bad_arguments(pipe):
    with pytest.raises(ValueError, match="condition"):
        pipe.clip_guided("x", steps=2, condition="image")
    with pytest.raises(ValueError, match="clip_guidance_scale"):
        pipe.clip_guided("x", steps=2, clip_guidance_scale=-1)
