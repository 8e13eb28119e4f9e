"""The in-place ResNet forward (unclip.fastpath) is bit-identical to diffusers' and never used for training."""

import pytest
import torch

from unclip.fastpath import fast_resnets
from unclip.presets import load_preset


def _decoder():
    from unclip.decoder import Decoder, DecoderConfig

    torch.manual_seed(0)
    model = Decoder(DecoderConfig(**load_preset("decoder", "tiny"))).eval()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 990])
    z_i, z_t, h, m = torch.randn(3, 384), torch.randn(3, 384), torch.randn(3, 5, 384), torch.ones(3, 5, dtype=torch.bool)
    return model, model.unet, lambda: model(x, t, z_i, z_t, h, m)


def _upsampler():
    from unclip.upsampler import Upsampler, UpsamplerConfig

    torch.manual_seed(0)
    model = Upsampler(UpsamplerConfig(**load_preset("upsampler", "tiny"))).eval()
    x, t = torch.randn(2, 6, 32, 32), torch.tensor([3, 800])
    return model, model.unet, lambda: model.unet(x, t).sample


@pytest.mark.parametrize("build", [_decoder, _upsampler], ids=["decoder (scale_shift)", "upsampler (default)"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_fast_resnets_are_bit_identical_to_diffusers(build, fmt):
    model, unet, run = build()
    unet.to(memory_format=fmt)
    with torch.no_grad():
        ref = run()
        assert fast_resnets(unet) >= 4  # down, mid, up (with resampling) blocks
        fast = run()
        again = run()  # in-place ops must not leak into shared state (temb, skip connections)
    assert torch.equal(ref, fast) and torch.equal(fast, again)


def test_fast_resnets_step_aside_for_training_and_unbind():
    model, unet, run = _decoder()
    fast_resnets(unet)
    model.train()
    out = run()  # grad enabled: diffusers' own forward, so autograd works
    out.square().mean().backward()
    assert all(p.grad is not None for p in unet.conv_in.parameters())
    with torch.no_grad():
        model.eval()
        ref = run()
        assert fast_resnets(unet, enabled=False) >= 4
        assert not any("forward" in m.__dict__ for m in unet.modules())
        assert torch.equal(run(), ref)


def test_tune_malloc_applies_on_glibc():
    import platform

    from unclip.fastpath import tune_malloc

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert tune_malloc() is True  # mallopt answers 0 for a parameter it does not know
