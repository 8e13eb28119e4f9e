import numpy as np
import pytest
import torch

import unclip
from unclip.sampling import SAMPLERS, guided


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return unclip.load(tiny_model_dir)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_guidance_formula_and_scale_one_is_no_guidance():
    torch.manual_seed(0)
    w = torch.randn(4, 4)

    def pair(x, t, cond_only=False):
        y = x @ w  # the "model": cond and uncond differ by a constant
        return y if cond_only else torch.cat([y[: len(y) // 2] - 1.0, y[len(y) // 2:]])

    x = torch.randn(2, 4)
    cond = pair(x, 0, cond_only=True)
    torch.testing.assert_close(guided(pair, 1.0)(x, 0), cond)
    torch.testing.assert_close(guided(pair, 3.0)(x, 0), cond + 2.0)  # uncond + 3 (cond - uncond)
    torch.testing.assert_close(guided(pair, 3.0, split=2)(x, 0)[:, 2:], cond[:, 2:])  # variance channels unguided


def test_guidance_interval_guides_only_inside_it_and_is_checked():
    calls = []

    def pair(x, t, cond_only=False):
        calls.append(cond_only)
        return x if cond_only else torch.cat([x[: len(x) // 2] - 1.0, x[len(x) // 2:]])  # [uncond; cond], uncond = cond - 1

    x = torch.zeros(2, 3)
    denoise = guided(pair, 3.0, interval=(100, 800))
    for t, want in ((99, 0.0), (100, 2.0), (800, 2.0), (801, 0.0), (999, 0.0)):
        torch.testing.assert_close(denoise(x, torch.tensor(t)), torch.full((2, 3), want))
    assert calls == [True, False, False, True, True]  # no unconditional pass outside the interval
    for bad in ((800, 100), (-1, 500), (0, 1000), (1, 2, 3), "10-20", (0.5, 10), (None, 5), ("1", "2")):
        with pytest.raises(ValueError, match="guidance interval"):
            guided(pair, 3.0, interval=bad)


def test_decoder_guidance_interval_from_its_config(pipe):
    """The whole range is plain CFG; an interval holding none of the steps is guidance 1."""
    from unclip.decoder import DecoderConfig

    z = torch.nn.functional.normalize(torch.randn(2, pipe.clip.embed_dim, generator=_gen(1)), dim=-1)

    def run(g):
        return pipe.from_embeds(z, "a cat", decoder_steps=4, upsample=False, output_type="pt",
                                decoder_guidance_scale=g, generator=_gen()).images

    plain, unguided = run(3.0), run(1.0)
    try:
        pipe.decoder.config.guidance_interval = (0, 999)
        torch.testing.assert_close(run(3.0), plain, rtol=0, atol=0)
        pipe.decoder.config.guidance_interval = (1, 2)  # DDIM 4 steps: t = 999, 749, 499, 249
        torch.testing.assert_close(run(3.0), unguided, rtol=0, atol=0)
        pipe.decoder.config.guidance_interval = (400, 600)
        assert not torch.equal(run(3.0), plain) and not torch.equal(run(3.0), unguided)
    finally:
        pipe.decoder.config.guidance_interval = None
    with pytest.raises(ValueError, match="guidance interval"):
        DecoderConfig(guidance_interval=(900, 100))
    assert DecoderConfig(guidance_interval=[167, 882]).guidance_interval == (167, 882)


def test_text_to_image_shapes_outputs_and_determinism(pipe):
    out = pipe("a grinning cat, 3D style", num_images_per_prompt=2, prior_steps=3, decoder_steps=3, upsampler_steps=2,
               generator=_gen(), output_type="np")
    assert out.images.shape == (2, 64, 64, 3) and out.image_embeds.shape == (2, 384)
    assert 0 <= out.images.min() and out.images.max() <= 1
    again = pipe("a grinning cat, 3D style", num_images_per_prompt=2, prior_steps=3, decoder_steps=3,
                 upsampler_steps=2, generator=_gen(), output_type="np")
    np.testing.assert_array_equal(out.images, again.images)
    pil = pipe(["pizza", "rocket"], prior_steps=2, decoder_steps=2, upsample=False, generator=_gen()).images
    assert len(pil) == 2 and pil[0].size == (16, 16)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs_every_stage(pipe, sampler):
    out = pipe("red heart", prior_steps=3, decoder_steps=3, upsampler_steps=2, sampler=sampler, generator=_gen(),
               output_type="pt")
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()


def test_best_of_keeps_the_candidate_closest_to_the_text(pipe):
    text, empty = pipe.encode_prompt(["rocket"])
    z1 = pipe.sample_image_embeds(text, empty, steps=2, best_of=1, generator=_gen(5))
    z4 = pipe.sample_image_embeds(text, empty, steps=2, best_of=4, generator=_gen(5))
    cand = pipe.sample_image_embeds(text.repeat(4), empty, steps=2, best_of=1, generator=_gen(5))
    assert (z4 @ text.text_embed.T).item() == pytest.approx((cand @ text.text_embed.T).max().item(), abs=1e-5)
    assert z1.shape == z4.shape == (1, 384)


def test_rerank_keeps_the_decoder_image_closest_to_the_prompt_in_clip(pipe):
    """rerank K: the K candidates of each output are the images that K times as many outputs would be (same
    seed); the kept one has the largest CLIP cosine with its prompt's z_t, and it keeps its own z_i."""
    prompts, kw = ["pizza", "rocket"], dict(prior_steps=2, decoder_steps=2, upsample=False, output_type="pt")
    cand = pipe(prompts, 6, generator=_gen(3), **kw)  # each prompt's 2 outputs x 3 candidates, in a row
    out = pipe(prompts, 2, rerank=3, generator=_gen(3), **kw)
    e = torch.nn.functional.normalize(pipe.encode_image(cand.images * 2 - 1), dim=-1)
    z_t = torch.nn.functional.normalize(pipe.encode_prompt(prompts)[0].text_embed, dim=-1).repeat_interleave(6, 0)
    keep = torch.arange(4) * 3 + (e * z_t).sum(-1).view(4, 3).argmax(1)
    assert keep.tolist() != [0, 3, 6, 9]  # the test would not tell reranking from taking the first candidate
    torch.testing.assert_close(out.images, cand.images[keep], rtol=0, atol=0)
    torch.testing.assert_close(out.image_embeds, cand.image_embeds[keep], rtol=0, atol=0)
    for bad in (0, 17, 2.0):
        with pytest.raises(ValueError, match="rerank must be an integer between 1 and 16"):
            pipe("pizza", rerank=bad, **kw)
    with pytest.raises(ValueError, match="do not make rows of 3"):
        pipe.rerank_images(cand.images[:4], z_t[:4], 3)


def test_rerank_at_an_early_step_goes_on_with_the_chosen_candidates_only(pipe):
    """rerank_at s: candidates compared on the x0 the decoder predicts at step s; the kept ones then finish
    as they would have in the whole batch. At the last step x0 is the finished image: plain reranking."""
    prompts, kw = ["pizza", "rocket"], dict(prior_steps=2, decoder_steps=3, upsample=False, output_type="pt")
    cand = pipe(prompts, 6, generator=_gen(3), **kw)
    full = pipe(prompts, 2, rerank=3, generator=_gen(3), **kw)
    last = pipe(prompts, 2, rerank=3, rerank_at=3, generator=_gen(3), **kw)
    torch.testing.assert_close(last.images, full.images, rtol=0, atol=0)
    chosen, rerank_images = [], pipe.rerank_images
    pipe.rerank_images = lambda *a: chosen.append(rerank_images(*a)) or chosen[-1]
    try:
        early = pipe(prompts, 2, rerank=3, rerank_at=1, generator=_gen(3), **kw)
    finally:
        del pipe.rerank_images
    keep = chosen[0]
    assert len(chosen) == 1 and early.images.shape == (4, 3, 16, 16)
    assert ((keep // 3) == torch.arange(4)).all()  # each output's own candidates
    torch.testing.assert_close(early.image_embeds, cand.image_embeds[keep], rtol=0, atol=0)
    torch.testing.assert_close(early.images, cand.images[keep], rtol=0, atol=1e-5)
    for bad in ({"rerank_at": 1}, {"rerank": 2, "rerank_at": 0}, {"rerank": 2, "rerank_at": 1.5}):
        with pytest.raises(ValueError, match="rerank_at is a decoder step"):
            pipe("pizza", **bad, **kw)
    with pytest.raises(ValueError, match="rerank_at 4 is past the decoder's 3 steps"):
        pipe("pizza", rerank=2, rerank_at=4, **kw)

def test_the_ablation_priors_text_and_none(pipe):
    kw = dict(decoder_steps=2, upsample=False, output_type="pt")
    text, empty = pipe.encode_prompt(["pizza"])
    t = pipe("pizza", prior="text", generator=_gen(), **kw)
    torch.testing.assert_close(t.image_embeds, text.text_embed)
    n = pipe("pizza", prior="none", generator=_gen(), **kw)
    torch.testing.assert_close(n.image_embeds[0], pipe.decoder.null_image_embed)
    ref = pipe.decoder.sample(pipe.decoder.null_image_embed[None], text, empty, steps=2, guidance_scale=8.0,
                              sampler="ddim", generator=_gen())
    torch.testing.assert_close(n.images, (ref + 1) / 2)


def test_a_caption_only_decoder_gets_the_null_z_i_and_shares_the_other_stages(pipe):
    """with_decoder swaps the decoder only; a decoder trained with image_drop 1 (GLIDE-like) is always given
    its null z_i, as prior="none" would, whatever the prior asked for."""
    from unclip.decoder import Decoder, DecoderConfig

    torch.manual_seed(1)
    glide = Decoder(DecoderConfig(**{**pipe.decoder.config.__dict__, "image_drop": 1.0}))
    other = pipe.with_decoder(glide)
    assert other.decoder is glide and pipe.decoder is not glide and other.prior is pipe.prior
    kw = dict(decoder_steps=2, upsample=False, output_type="pt")
    a = other("pizza", generator=_gen(), **kw)
    torch.testing.assert_close(a.image_embeds[0], glide.null_image_embed)
    torch.testing.assert_close(a.images, other("pizza", prior="none", generator=_gen(), **kw).images)
    assert not torch.equal(a.images, pipe("pizza", prior="none", generator=_gen(), **kw).images)


def test_autoregressive_prior_is_selectable(pipe):
    out = pipe("pizza", prior="ar", decoder_steps=2, upsample=False, generator=_gen(), output_type="pt")
    assert out.images.shape == (1, 3, 16, 16)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(1))


def test_ddpm_step_minimum_applies_only_to_the_stages_that_run(pipe):
    out = pipe("x", prior="text", sampler="ddpm", prior_steps=1, decoder_steps=2, upsample=False, output_type="pt")
    assert out.images.shape[0] == 1  # prior_steps is unused with prior="text"


@pytest.mark.parametrize("kwargs,match", [
    ({"prompt": ""}, None), ({"prompt": []}, "non-empty list"), ({"prompt": "x", "num_images_per_prompt": 0}, "at least 1"),
    ({"prompt": "x", "sampler": "euler"}, "unknown sampler 'euler'"), ({"prompt": "x", "output_type": "jpg"}, "output_type"),
    ({"prompt": "x", "prior": "gan"}, "prior must be"), ({"prompt": "x", "decoder_steps": 0}, "decoder_steps must be an integer between 1 and 1000"),
    ({"prompt": "x", "prior_steps": 5000}, "prior_steps must be"), ({"prompt": "x", "decoder_guidance_scale": -1}, "between 0.0"),
    ({"prompt": "x", "eta": 2.0}, "eta must be between 0.0 and 1.0"),
    ({"prompt": "x", "sampler": "ddpm", "decoder_steps": 1}, "decoder_steps must be at least 2 with the ddpm sampler"),
    ({"prompt": "x", "sampler": "ddpm", "upsample": True, "upsampler_steps": 1}, "upsampler_steps must be at least 2"),
])
def test_bad_arguments_are_clear_errors(pipe, kwargs, match):
    if match is None:  # the empty prompt is valid: it is the unconditional caption
        pipe(**kwargs, prior_steps=2, decoder_steps=2, upsample=False)
        return
    with pytest.raises(ValueError, match=match):
        pipe(**{"prior_steps": 2, "decoder_steps": 2, "upsample": False, **kwargs})


def test_a_prompt_longer_than_the_context_is_truncated_with_a_warning(pipe):
    long = "a grinning cat " * 40
    with pytest.warns(UserWarning, match="reads only the first 64"):
        text, _ = pipe.encode_prompt([long])
    assert text.hidden_states.shape[1] == 64


def _emoji(name="twemoji-svg/package/1f680.svg"):
    from conftest import NPM
    from PIL import Image

    from unclip.data.render import render

    import io
    return Image.open(io.BytesIO(render((NPM / name).read_bytes(), "svg", 64).png))


def test_slerp_endpoints_and_norm():
    from unclip.pipeline import slerp

    a, b = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    torch.testing.assert_close(slerp(a[None], b[None], 0.0), a[None])
    torch.testing.assert_close(slerp(a[None], b[None], 1.0), b[None])
    torch.testing.assert_close(slerp(a[None], b[None], 0.3).norm(), torch.tensor(1.0))


def test_ddim_inversion_reconstructs_and_fixed_point_iterations_tighten_it(pipe):
    import copy

    # A random UNet's ε swings wildly with x, so no fixed point exists to find; damp its output so
    # ε varies smoothly, as a trained decoder's does. ᾱ_T ≈ 2e-9 then still amplifies any ε
    # mismatch 20000-fold, which is what separates plain from fixed-point inversion.
    pipe = copy.deepcopy(pipe)
    with torch.no_grad():
        pipe.decoder.unet.conv_out.weight.mul_(0.005)
    image = _emoji()
    x = __import__("unclip.pipeline", fromlist=["pil_to_tensor"]).pil_to_tensor(image, 16)
    errors = {}
    for iters in (0, 8):
        z_i, x_T = pipe.invert(image, steps=5, fixed_point_iters=iters)
        back = pipe.from_embeds(z_i, latents=x_T, decoder_steps=5, decoder_guidance_scale=1.0, clip_denoised=False,
                                upsample=False, output_type="pt").images * 2 - 1
        errors[iters] = float((back - x).abs().max())
    assert errors[8] < 1e-3 < errors[0], errors  # plain inversion is approximate; fixed-point makes it exact


def test_variations_interpolation_and_text_diff_shapes(pipe):
    image = _emoji()
    v = pipe.variations(image, 3, decoder_steps=3, upsample=False, generator=_gen(), output_type="pt")
    assert v.images.shape == (3, 3, 16, 16)
    torch.testing.assert_close(v.image_embeds[0], v.image_embeds[2])
    i = pipe.interpolate(image, _emoji("twemoji-svg/package/1f355.svg"), frames=4, decoder_steps=3, upsample=False,
                         output_type="pt")
    assert i.images.shape == (4, 3, 16, 16)
    torch.testing.assert_close(i.image_embeds[0:1], pipe.encode_image(image))
    p = pipe.interpolate("rocket", "pizza", frames=3, decoder_steps=3, upsample=False, output_type="pt", generator=_gen())
    assert p.images.shape == (3, 3, 16, 16)
    e = pipe.text_diff(image, "rocket", "red rocket", thetas=(0.0, 0.5), decoder_steps=3, upsample=False, output_type="pt")
    assert e.images.shape == (2, 3, 16, 16)
    torch.testing.assert_close(e.image_embeds[0:1], pipe.encode_image(image))
    assert not torch.allclose(e.image_embeds[1], e.image_embeds[0])


def test_text_diff_at_theta_0_is_the_inversion_decoded_at_guidance_1(pipe):
    """The edit lives in z_i: inverted and decoded under the empty caption, at the inversion's guidance."""
    image = _emoji()
    z_i, x_T = pipe.invert(image, steps=3)
    back = pipe.from_embeds(z_i, latents=x_T, decoder_steps=3, decoder_guidance_scale=1.0, upsample=False,
                            output_type="pt").images
    e = pipe.text_diff(image, "rocket", "red rocket", thetas=(0.0,), decoder_steps=3, upsample=False, output_type="pt")
    torch.testing.assert_close(e.images, back)
    assert pipe.default_decoder_guidance(None, inverted=True) == 1.0
    z_3, x_3 = pipe.invert(image, steps=3, guidance_scale=3.0)  # another guidance: inverted at it too
    back = pipe.from_embeds(z_3, latents=x_3, decoder_steps=3, decoder_guidance_scale=3.0, upsample=False,
                            output_type="pt").images
    e = pipe.text_diff(image, "rocket", "red rocket", thetas=(0.0,), decoder_steps=3, decoder_guidance_scale=3.0,
                       upsample=False, output_type="pt")
    torch.testing.assert_close(e.images, back)
    assert pipe.default_decoder_guidance(2.5, inverted=True) == 2.5
    assert pipe.default_decoder_guidance() == pipe.default_decoder_guidance(None, inverted=False) != 1.0


def test_precision_autocasts_the_denoisers_and_fp32_restores_them(pipe):
    import copy

    pipe = copy.deepcopy(pipe)
    z = pipe.encode_image(_emoji())
    text, empty = pipe.encode_prompt([""])
    kw = dict(steps=3, guidance_scale=2.0, sampler="ddim", generator=None)
    fp32 = pipe.decoder.sample(z, text, empty, **{**kw, "generator": _gen(1)})
    x = torch.randn(1, 3, 16, 16)
    t = torch.tensor([500])
    eps32 = pipe.decoder(x, t, z, text.text_embed, text.hidden_states, text.mask)
    pipe.set_precision("bf16")
    assert pipe.precision == "bf16"
    eps16 = pipe.decoder(x, t, z, text.text_embed, text.hidden_states, text.mask)
    assert eps16.dtype == torch.float32  # back in fp32 for the sampler's arithmetic
    assert 0 < float((eps16 - eps32).abs().max()) < 0.1 * float(eps32.abs().max())
    for stage in (pipe.prior, pipe.decoder, pipe.upsampler):  # every denoiser, not only the decoder
        assert "forward" in vars(stage) and stage._autocast_dtype is torch.bfloat16
    if pipe.ar_prior is not None:  # it samples through generate, not forward
        assert "generate" in vars(pipe.ar_prior)
    pipe.set_precision("fp32")
    torch.testing.assert_close(pipe.decoder.sample(z, text, empty, **{**kw, "generator": _gen(1)}), fp32, rtol=0, atol=0)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16"):
        pipe.set_precision("int8")


def test_edits_variations_and_decoding_refuse_what_they_cannot_do(pipe):
    image = _emoji()
    z = pipe.encode_image(image)
    with pytest.raises(ValueError, match="same z_t"):
        pipe.text_diff(image, "a rocket", "a rocket", decoder_steps=2)
    with pytest.raises(ValueError, match="at least one"):
        pipe.text_diff(image, "rocket", "red rocket", thetas=(), decoder_steps=2)
    with pytest.raises(ValueError, match="frames must be at least 2"):
        pipe.interpolate("a", "b", frames=1, decoder_steps=2)
    with pytest.raises(ValueError, match="sample with ddim, not 'dpm"):
        pipe.variations(image, 2, sampler="dpm++", decoder_steps=2)
    with pytest.raises(ValueError, match="decodes with the ddim sampler"):
        pipe.from_embeds(z, latents=torch.zeros(1, 3, 64, 64), sampler="dpm++", decoder_steps=2)
    with pytest.raises(ValueError, match="2 captions for 1 image"):
        pipe.from_embeds(z, ["a", "b"], decoder_steps=2)
    with pytest.raises(ValueError, match="output_type"):
        pipe.from_embeds(z, decoder_steps=2, output_type="numpy")
    with pytest.raises(ValueError, match="upsampler_strength must be in"):
        pipe("x", prior_steps=2, decoder_steps=2, upsampler_strength=0.0)
    text, empty = pipe.encode_prompt([""])
    with pytest.raises(ValueError, match="at least 2 with the ddpm sampler"):
        pipe.decoder.sample(z, text, empty, steps=1, sampler="ddpm")


@pytest.mark.parametrize("sampler,steps", [("ddim", 1), ("dpm++", 1), ("ddpm", 2)])
def test_the_mean_start_falls_back_to_noise_when_too_few_steps_remain(pipe, sampler, steps):
    """1 DDIM step has only t = 999 (skipped by the mean start); DDPM's 2 are t = 999 and 0."""
    import copy

    from unclip.sampling import make_scheduler

    pipe = copy.deepcopy(pipe)
    pipe.decoder.config.dc_mean = (0.8, 0.7, 0.5)
    s = pipe.decoder.config.sample_size
    noise = torch.randn(1, 3, s, s, generator=_gen(1))
    x, strength = pipe.decoder.start(1, make_scheduler(sampler), steps, noise=noise)
    assert strength == 1.0 and torch.equal(x, noise)
    text, empty = pipe.encode_prompt([""])
    out = pipe.decoder.sample(pipe.encode_image(_emoji()), text, empty, steps=steps, sampler=sampler, generator=_gen())
    assert out.shape == (1, 3, s, s) and float(out.std()) > 0.05  # not a flat mean-colour image


@pytest.mark.parametrize("dc_mean", [None, (0.8, 0.7, 0.5)])
def test_decoder_start_noise_can_be_given(pipe, dc_mean):
    """A given N(0, I) draw goes through the same start as a drawn one: plain, or the mean start."""
    import copy

    pipe = copy.deepcopy(pipe)
    pipe.decoder.config.dc_mean = dc_mean
    z = pipe.encode_image(_emoji())
    text, empty = pipe.encode_prompt([""])
    s = pipe.decoder.config.sample_size
    kw = dict(steps=3, guidance_scale=2.0, sampler="ddim")
    drawn = pipe.decoder.sample(z, text, empty, generator=_gen(5), **kw)
    given = pipe.decoder.sample(z, text, empty, noise=torch.randn(1, 3, s, s, generator=_gen(5)), **kw)
    torch.testing.assert_close(given, drawn)
    sched = __import__("unclip.sampling", fromlist=["make_scheduler"]).make_scheduler("ddim", "epsilon", 1.0)
    x, strength = pipe.decoder.start(1, sched, 3, noise=torch.randn(1, 3, s, s, generator=_gen(5)))
    if dc_mean is None:
        assert strength == 1.0
    else:  # t = 999 skipped, the start centred on the data's mean colour
        assert strength < 1.0 and x.mean((2, 3)).flatten().tolist() == pytest.approx(
            [v * float(sched.alphas_cumprod[int(sched.timesteps[1])]) ** 0.5 for v in dc_mean], abs=1e-6)
    with pytest.raises(ValueError, match="noise must have shape"):
        pipe.decoder.sample(z, text, empty, noise=torch.randn(2, 3, s, s), **kw)


@pytest.mark.parametrize("steps", [10, 7, 61])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_reach_the_data_under_an_oracle_denoiser(sampler, steps):
    """With the exact ε of a one-image dataset, every sampler must land on that image, at any step
    count: diffusers' trailing spacing gave 61 steps a 62nd at t = -1 (the image destroyed), and its
    DDIM ended 7 steps at t = 0, with noise left in the image."""
    from unclip.sampling import make_scheduler, sample, set_timesteps

    assert len(set_timesteps(make_scheduler(sampler), steps)) == steps

    x0 = torch.rand(1, 3, 8, 8) * 1.6 - 0.8
    sched = make_scheduler(sampler, "epsilon", 1.0)
    ac = sched.alphas_cumprod

    def oracle(x, t):
        a = ac[t]
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    out = sample(oracle, torch.randn(1, 3, 8, 8, generator=_gen()), sched, steps, _gen())
    torch.testing.assert_close(out, x0, atol=2e-3 if sampler == "ddpm" else 1e-5, rtol=0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_stay_in_range_when_the_denoiser_is_slightly_wrong(sampler):
    """Like a network: ε off by 2% and bounded (|ε| ≤ 4), so it cannot undo a wrong x_t as the
    exact oracle does. At the first step (ᾱ ≈ 2e-9) the 2% is a 1e3-sized x0 error unless x0 is
    clipped; every sampler must still end near the image (DPM-Solver++ once returned noise here)."""
    from unclip.sampling import make_scheduler, sample

    x0 = torch.rand(1, 3, 8, 8) * 1.6 - 0.8
    sched = make_scheduler(sampler, "epsilon", 1.0)
    ac = sched.alphas_cumprod
    err = 0.02 * torch.randn(1, 3, 8, 8, generator=_gen())

    def noisy_oracle(x, t):
        a = ac[t]
        return ((x - a.sqrt() * x0) / (1 - a).sqrt() + err).clamp(-4, 4)

    out = sample(noisy_oracle, torch.randn(1, 3, 8, 8, generator=_gen()), sched, 10, _gen())
    assert (out - x0).abs().max() < 0.1


def test_pca_fit_project_and_probe(tiny_model_dir, tmp_path):
    import shutil

    from unclip.pca import fit_pca, project, save_pca

    z = torch.nn.functional.normalize(torch.randn(200, 384, generator=_gen()) + 2 * torch.randn(384, generator=_gen(1)), dim=-1)
    pca = fit_pca(z)
    c = pca["components"][:199]
    torch.testing.assert_close(c @ c.T, torch.eye(199), atol=1e-4, rtol=0)  # orthonormal axes
    assert (pca["variance"][:-1] >= pca["variance"][1:]).all()
    torch.testing.assert_close(project(z[:3], pca, 384), z[:3], atol=1e-5, rtol=0)  # all components: z itself
    torch.testing.assert_close(project(z[:3], pca, 0), torch.nn.functional.normalize(pca["mean"], dim=-1).expand(3, -1))
    with pytest.raises(ValueError, match="k must be between 0 and 384"):
        project(z, pca, 385)

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    with pytest.raises(ValueError, match="no clip_pca.safetensors"):
        unclip.load(model).pca_reconstructions(_emoji(), (1, 2))
    save_pca(fit_pca(torch.randn(500, 384, generator=_gen())), model)  # full rank: k = 384 spans any z_i
    pipe = unclip.load(model)
    out = pipe.pca_reconstructions(_emoji(), (1, 384), decoder_steps=3, upsample=False, generator=_gen(), output_type="pt")
    assert out.images.shape == (2, 3, 16, 16)
    full = pipe.from_embeds(pipe.encode_image(_emoji()), noise=torch.randn(1, 3, 16, 16, generator=_gen()),
                            decoder_steps=3, sampler="ddim", upsample=False, output_type="pt")
    torch.testing.assert_close(out.images[1:], full.images, atol=1e-4, rtol=0)  # k = D decodes z_i itself


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_truncated_runs_from_a_noised_image_reach_the_data(sampler):
    """strength < 1 (img2img-style): start at the matching step from x0 noised there; only
    round(steps·strength) steps run, and every sampler still lands on x0 under the exact ε."""
    from unclip.sampling import make_scheduler, sample, truncated_timesteps

    x0 = torch.rand(1, 3, 8, 8) * 1.6 - 0.8
    sched = make_scheduler(sampler, "epsilon", 1.0)
    ac = sched.alphas_cumprod
    ts = truncated_timesteps(make_scheduler(sampler, "epsilon", 1.0), 10, 0.4)
    assert len(ts) == 4 and int(ts[0]) < 999
    x = ac[ts[0]].sqrt() * x0 + (1 - ac[ts[0]]).sqrt() * torch.randn(1, 3, 8, 8, generator=_gen())
    seen = []

    def oracle(x, t):
        seen.append(int(t))
        a = ac[t]
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    out = sample(oracle, x, sched, 10, _gen(), strength=0.4)
    assert seen == [int(t) for t in ts]
    torch.testing.assert_close(out, x0, atol=2e-3, rtol=0)


def test_upsampler_strength_one_is_unchanged_and_below_one_starts_from_the_image(pipe):
    low = torch.rand(1, 3, 16, 16, generator=_gen()) * 2 - 1
    a = pipe.upsampler.sample(low, steps=4, generator=_gen())
    b = pipe.upsampler.sample(low, steps=4, strength=1.0, generator=_gen())
    torch.testing.assert_close(a, b)
    c = pipe.upsampler.sample(low, steps=4, strength=0.5, generator=_gen())
    assert c.shape == a.shape and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="strength must be in"):
        pipe.upsampler.sample(low, steps=4, strength=0.0)


def test_decoder_guidance_none_takes_the_models_own_everywhere(pipe):
    """None: the decoder config's guidance_scale (set per model: 8 oversaturates some), else 8."""
    z = torch.nn.functional.normalize(torch.randn(1, pipe.clip.embed_dim, generator=_gen(1)), dim=-1)
    old = pipe.decoder.config.guidance_scale
    try:
        pipe.decoder.config.guidance_scale = None
        assert pipe.default_decoder_guidance() == 8.0 and pipe.default_decoder_guidance(2.0) == 2.0
        pipe.decoder.config.guidance_scale = 1.5
        assert pipe.default_decoder_guidance() == 1.5
        for call in (lambda g: pipe("a cat", prior_steps=2, decoder_steps=2, upsample=False, output_type="pt",
                                    decoder_guidance_scale=g, generator=_gen()).images,
                     lambda g: pipe.from_embeds(z, "a cat", decoder_steps=2, upsample=False, output_type="pt",
                                                decoder_guidance_scale=g, generator=_gen()).images):
            torch.testing.assert_close(call(None), call(1.5), rtol=0, atol=0)
            assert not torch.equal(call(None), call(8.0))
    finally:
        pipe.decoder.config.guidance_scale = old


@pytest.mark.parametrize("sampler", ["ddim", "dpm++", "ddpm"])
def test_pruning_rows_mid_run_equals_running_those_rows_alone(sampler):
    """sampling.Prune: `choose` sees the clean images each row's output implies at that step; the rows it
    keeps then go on exactly as if they had been sampled alone (DPM-Solver++'s stored outputs cut with
    them); DDPM draws fresh noise per row, so there only the shapes and the x0 seen are checked."""
    from unclip.sampling import Prune, make_scheduler, sample

    x0 = torch.rand(4, 3, 8, 8, generator=_gen(1)) * 1.6 - 0.8
    ac = make_scheduler(sampler, "epsilon", 1.0).alphas_cumprod

    def oracle_for(rows):
        err = 0.05 * torch.randn(4, 3, 8, 8, generator=_gen(2))[rows]  # wrong, so the history matters

        def eps(x, t):
            return (x - ac[t].sqrt() * x0[rows]) / (1 - ac[t]).sqrt() + err
        return eps

    x_T, keep, seen = torch.randn(4, 3, 8, 8, generator=_gen()), torch.tensor([2, 0]), []

    def choose(x0_pred):
        seen.append(x0_pred)
        return keep

    every = torch.arange(4)
    pruned = sample(oracle_for(every), x_T, make_scheduler(sampler, "epsilon", 1.0), 8, _gen(),
                    prune=Prune(3, choose, oracle_for))
    alone = sample(oracle_for(keep), x_T[keep], make_scheduler(sampler, "epsilon", 1.0), 8, _gen())
    assert pruned.shape == (2, 3, 8, 8) and len(seen) == 1 and seen[0].shape == (4, 3, 8, 8)
    assert (seen[0] - x0).abs().mean() < 0.1 < (x_T.clamp(-1, 1) - x0).abs().mean()  # the data, not the noise
    if sampler != "ddpm":
        torch.testing.assert_close(pruned, alone, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="cannot choose rows after step 9: this sampling runs 8 steps"):
        sample(oracle_for(every), x_T, make_scheduler(sampler, "epsilon", 1.0), 8, prune=Prune(9, choose, oracle_for))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_clipping_x0_keeps_the_prediction_space(prediction_type):
    """_clip_x0 returns the output in the space it came in: unchanged when its x0 is in range, and implying
    the clipped x0 when not (DPM-Solver++'s x0 clipping for every prediction type)."""
    from unclip.sampling import _clip_x0, predicted_x0

    ab = torch.tensor(0.3)
    for scale, r in ((0.8, 1.0), (3.0, 1.0)):
        x0 = (torch.rand(2, 3, 4, 4, generator=_gen()) * 2 - 1) * scale
        eps = torch.randn(2, 3, 4, 4, generator=_gen(1))
        x = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        out = {"epsilon": eps, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0, "sample": x0}[prediction_type]
        torch.testing.assert_close(predicted_x0(out, x, ab, prediction_type), x0, atol=1e-5, rtol=0)
        clipped = _clip_x0(out, x, ab, prediction_type, r)
        torch.testing.assert_close(predicted_x0(clipped, x, ab, prediction_type), x0.clamp(-r, r), atol=1e-5, rtol=0)
        if scale < 1:
            torch.testing.assert_close(clipped, out, atol=1e-5, rtol=0)
