"""Pinned output slices of each tiny stage from fixed seeds (catch silent changes in wiring or in
the pinned diffusers/torch versions; regenerate only for an intended change)."""

import torch

from unclip.presets import load_preset


def _preset(stage):
    p = load_preset(stage, "tiny")
    if "block_out_channels" in p:
        p["block_out_channels"] = tuple(p["block_out_channels"])
    return p


def test_decoder_pinned_slice():
    from unclip.decoder import Decoder, DecoderConfig

    torch.manual_seed(0)
    model = Decoder(DecoderConfig(**_preset("decoder"))).eval()
    g = torch.Generator().manual_seed(0)
    x, z_i, z_t = torch.randn(1, 3, 16, 16, generator=g), torch.randn(1, 384, generator=g), torch.randn(1, 384, generator=g)
    h = torch.randn(1, 5, 384, generator=g)
    with torch.no_grad():
        out = model(x, torch.tensor([500]), z_i, z_t, h, torch.ones(1, 5, dtype=torch.bool))
    expected = torch.tensor([-0.0072, -0.0434, -0.2526, 0.1782, -0.1483, 0.2389])
    torch.testing.assert_close(out[0, :, 0, 0], expected, atol=1e-4, rtol=0)


def test_prior_pinned_slice():
    from unclip.prior import Prior, PriorConfig

    torch.manual_seed(0)
    model = Prior(PriorConfig(**_preset("prior"))).eval()
    g = torch.Generator().manual_seed(0)
    x, z_t, h = torch.randn(1, 384, generator=g), torch.randn(1, 384, generator=g), torch.randn(1, 16, 384, generator=g)
    with torch.no_grad():
        out = model(x, torch.tensor([500]), z_t, h, torch.ones(1, 16, dtype=torch.bool))
    expected = torch.tensor([0.3548, -0.1020, -0.3760, 0.8354, -0.6033, -0.5361])
    torch.testing.assert_close(out[0, :6], expected, atol=1e-4, rtol=0)


def test_upsampler_pinned_slice():
    from unclip.upsampler import Upsampler, UpsamplerConfig

    torch.manual_seed(0)
    model = Upsampler(UpsamplerConfig(**_preset("upsampler"))).eval()
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(1, 3, 32, 32, generator=g), torch.randn(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = model(x, torch.tensor([500]), cond)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.1701, -0.1492, 0.1264]), atol=1e-4, rtol=0)
