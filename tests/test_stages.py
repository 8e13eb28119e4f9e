"""Each stage: shapes, save/load round trips, and overfitting one fixed tiny batch (loss / 10)."""

import pytest
import torch

from conftest import overfit
from unclip.train import TrainConfig


@pytest.fixture(autouse=True)
def _seeded():
    """Models draw their initial weights from the global generator: seed it per test, so a test's
    weights do not depend on which tests ran before it."""
    torch.manual_seed(0)


def _cfg(stage, data, clip_dir, **options):
    return TrainConfig(stage=stage, preset="tiny", data=data, options={"clip": str(clip_dir), **options})


def test_clip_overfits_a_fixed_batch(built_dataset):
    from unclip.clip_task import CLIPTask

    task = CLIPTask(TrainConfig(stage="clip", preset="tiny", data=built_dataset, options={"min_scale": 1.0}))
    first, last = overfit(task, steps=150, lr=3e-3, n=8)
    assert last < first / 10


def test_prior_overfits_a_fixed_batch(built_dataset, tiny_clip_dir):
    from unclip.prior import PriorTask

    task = PriorTask(_cfg("prior", built_dataset, tiny_clip_dir))
    first, last = overfit(task, steps=200, lr=3e-3)
    assert last < first / 10


def test_decoder_overfits_a_fixed_batch(built_dataset, tiny_clip_dir):
    from unclip.decoder import DecoderTask

    task = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir))
    first, last = overfit(task, steps=150, lr=3e-3)
    assert last < first / 10


def test_high_noise_weight_floors_the_x0_weight_at_high_noise_only():
    from unclip.diffusion import Schedule, high_noise_weight, min_snr_weight

    snr = Schedule().snr(torch.arange(1000))
    w = torch.maximum(min_snr_weight(snr, 5.0), high_noise_weight(snr, 0.05))
    low = snr >= 0.05
    assert torch.equal(w[low], min_snr_weight(snr, 5.0)[low])  # t <= ~859 untouched
    assert w[950] == pytest.approx(0.05 / float(snr[950]), rel=1e-6) and w[950] > 8
    assert w[999] == 20.0  # capped
    assert torch.equal(high_noise_weight(snr, 0.0), torch.zeros(1000))


def test_decoder_loss_applies_the_high_noise_weight(built_dataset, tiny_clip_dir):
    """At t = 950 the ε term of the loss is scaled by floor / SNR; the L_vlb term is not."""
    from unclip.decoder import DecoderTask
    from unclip.train import sample_generator

    plain = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir))
    floored = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, high_noise_floor=0.05))
    floored.model.load_state_dict(plain.model.state_dict())
    batch = plain.batch([0, 1, 2], [sample_generator(0, 0, i) for i in range(3)], "cpu")
    batch["t"] = torch.full((3,), 950)
    with torch.no_grad():
        (l0, logs0), (l1, logs1) = plain.loss(plain.model, batch), floored.loss(floored.model, batch)
    ratio = (l1 - logs1["vb"]) / (l0 - logs0["vb"])
    assert float(ratio) == pytest.approx(0.05 / float(plain.schedule.snr(torch.tensor(950))), rel=1e-4)


def test_dc_error_counts_the_mean_colour_like_all_other_frequencies_together():
    from unclip.diffusion import dc_error

    flat = torch.full((2, 3, 8, 8), 0.5)  # an error that is only a mean colour
    assert torch.allclose(dc_error(flat), torch.full((2,), 0.25 * 64))
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 4).expand(2, 3, 8, 8)  # zero mean
    assert torch.equal(dc_error(checker), torch.zeros(2))


def test_decoder_loss_adds_the_mean_colour_error_at_high_noise_only(built_dataset, tiny_clip_dir):
    from unclip.decoder import DecoderTask
    from unclip.diffusion import dc_error, high_noise_weight
    from unclip.train import sample_generator

    base = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, high_noise_floor=0.05))
    dc = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, high_noise_floor=0.05, dc_weight=0.01))
    dc.model.load_state_dict(base.model.state_dict())
    batch = base.batch([0, 1], [sample_generator(0, 0, i) for i in range(2)], "cpu")
    for t, expect_dc in ((950, True), (500, False)):
        batch["t"] = torch.full((2,), t)
        with torch.no_grad():
            (l0, _), (l1, _) = base.loss(base.model, batch), dc.loss(dc.model, batch)
            x_t = base.schedule.q_sample(batch["x0"], batch["t"], batch["noise"])
            eps = base.model(x_t, batch["t"], batch["image_embed"], batch["text_embed"], batch["text_hidden"],
                             batch["text_mask"], batch["image_dropped"])[:, :3]
            w = high_noise_weight(base.schedule.snr(batch["t"]), 0.05)
            extra = (0.01 * w * dc_error(eps - batch["noise"])).mean() if expect_dc else 0.0
        assert float((l1 - l0).detach()) == pytest.approx(float(extra), rel=1e-4, abs=1e-7)


def test_decoder_start_is_standard_without_a_mean_colour_and_mean_coloured_with_one():
    from unclip.decoder import Decoder, DecoderConfig
    from unclip.sampling import make_scheduler

    from unclip.presets import load_preset

    model = Decoder(DecoderConfig(**load_preset("decoder", "tiny")))
    x, strength = model.start(2, make_scheduler("ddim"), 25, torch.Generator().manual_seed(3))
    assert strength == 1.0 and torch.equal(x, torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)))
    model.config.dc_mean = (0.6, 0.5, -0.2)
    for sampler, steps, first_kept in (("ddim", 25, 959), ("ddpm", 50, 979), ("dpm++", 12, 916)):
        sched = make_scheduler(sampler)
        x, strength = model.start(2, sched, steps, torch.Generator().manual_seed(3))
        sched.set_timesteps(steps)
        assert int(sched.timesteps[0]) == 999 and strength == (steps - 1) / steps  # only t = 999 dropped
        a = sched.alphas_cumprod[first_kept]
        dc = x.mean((2, 3))  # (B, 3): exactly the forward process's mean colour at that t
        torch.testing.assert_close(dc, (a.sqrt() * torch.tensor([0.6, 0.5, -0.2])).expand(2, 3), atol=1e-6, rtol=0)
    model.mean_start = False
    assert model.start(2, make_scheduler("ddim"), 25)[1] == 1.0


def test_decoder_task_records_the_data_mean_colour(built_dataset, tiny_clip_dir):
    import numpy as np

    from unclip.decoder import DecoderTask

    task = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir))
    want = np.asarray(task.cond.images).reshape(-1, 3).mean(0) / 127.5 - 1
    assert task.model.config.dc_mean == pytest.approx(tuple(want), abs=1e-6)


def test_conditioning_errors_tell_what_z_i_adds(built_dataset, tiny_clip_dir):
    from unclip.decoder import DecoderTask
    from unclip.decoder_checks import conditioning_errors

    task = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir))
    torch.manual_seed(0)
    with torch.no_grad():
        task.model.null_image_embed.normal_()
    r = conditioning_errors(task.model, task.cond, [0, 1, 2], timesteps=(200, 900))
    assert r["timesteps"] == [200, 900] and all(len(v) == 2 for v in r.values())
    assert r["own z_i"] != r["other z_i"] and r["own z_i"] != r["null z_i"] and r["own z_i"] != r["own z_i, no caption"]
    assert task.model.training  # left as it was
    proj = task.model.text_proj  # with z_i's two projections zeroed, every z_i (the null one too) gives the same errors
    with torch.no_grad():
        proj.clip_image_embeddings_project_to_time_embeddings.weight.zero_()
        proj.clip_extra_context_tokens_proj.weight.zero_()
    r = conditioning_errors(task.model, task.cond, [0, 1, 2], timesteps=(200, 900))
    assert r["own z_i"] == r["other z_i"] == r["null z_i"]
    assert r["own z_i, no caption"] == r["null z_i, no caption"] != r["own z_i"]


def test_neighbour_errors_weigh_the_nearest_training_images_and_leave_the_image_out(built_dataset, tiny_clip_dir):
    """z_i alone, no decoder: the mean image's x0-MSE, and the softmax-weighted nearest training images';
    at a tiny temperature the estimate is the nearest other image, never the image itself."""
    import torch.nn.functional as F

    from unclip.decoder import DecoderTask
    from unclip.decoder_checks import neighbour_errors

    cond = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir)).cond
    n, idx = len(cond), [0, 1, 2]
    x = cond.pixels(list(range(n)), 16)
    r = neighbour_errors(cond, cond, idx, 16, k=2, temperature=1e-6)
    assert r["mean image"] == pytest.approx(float((x[idx] - x.mean(0)).pow(2).mean()), rel=1e-5)
    z = F.normalize(cond.image_embeds(list(range(n))).float(), dim=-1)
    sim = z[idx] @ z.T
    sim[torch.arange(3), torch.tensor(idx)] = -2
    nearest = x[sim.argmax(1)]
    assert r["2 z_i neighbours"] == pytest.approx(float((x[idx] - nearest).pow(2).mean()), rel=1e-4)


def test_decoder_shapes_guidance_null_and_roundtrip(tmp_path):
    from unclip.decoder import Decoder, DecoderConfig
    from unclip.presets import load_preset

    p = load_preset("decoder", "tiny")
    p["block_out_channels"] = tuple(p["block_out_channels"])
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(**p)).eval()
    with torch.no_grad():
        model.null_image_embed.normal_()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    z_i, z_t, h, m = torch.randn(2, 384), torch.randn(2, 384), torch.randn(2, 5, 384), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        out = model(x, t, z_i, z_t, h, m)
        dropped = model(x, t, z_i, z_t, h, m, image_dropped=torch.tensor([True, False]))
        null = model(x, t, model.null_image_embed.expand(2, -1), z_t, h, m)
    assert out.shape == (2, 6, 16, 16)
    torch.testing.assert_close(dropped[0], null[0])
    torch.testing.assert_close(dropped[1], out[1])
    model.save(tmp_path)
    again = Decoder.load(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, z_i, z_t, h, m), out, atol=5e-2, rtol=0)  # fp16 weights on disk


def test_prior_standardisation_roundtrip_and_save_load(tmp_path):
    import numpy as np

    from unclip.presets import load_preset
    from unclip.prior import Prior, PriorConfig

    torch.manual_seed(0)
    model = Prior(PriorConfig(**load_preset("prior", "tiny"))).eval()
    mean, std = np.linspace(-1, 1, 384).astype("float32"), np.linspace(0.5, 2, 384).astype("float32")
    model.set_stats(mean, std)
    z = torch.randn(3, 384)
    torch.testing.assert_close(model.unstandardize(model.standardize(z)), z)
    assert not model.transformer.clip_mean.requires_grad
    x, t, zt, h, m = torch.randn(3, 384), torch.tensor([0, 5, 999]), torch.randn(3, 384), torch.randn(3, 16, 384), torch.ones(3, 16, dtype=torch.bool)
    with torch.no_grad():
        out = model(x, t, zt, h, m)
    assert out.shape == (3, 384)
    model.save(tmp_path)
    again = Prior.load(tmp_path)
    torch.testing.assert_close(again.transformer.clip_std, model.transformer.clip_std, atol=1e-2, rtol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, zt, h, m), out, atol=5e-2, rtol=0)


def test_missing_clip_stage_is_a_clear_error(built_dataset, tmp_path):
    from unclip.decoder import DecoderTask

    with pytest.raises(FileNotFoundError, match="no trained CLIP stage at .*train it first"):
        DecoderTask(_cfg("decoder", built_dataset, tmp_path / "nothing"))


def test_upsampler_overfits_a_fixed_batch(built_dataset):
    from unclip.upsampler import UpsamplerTask

    task = UpsamplerTask(TrainConfig(stage="upsampler", preset="tiny", data=built_dataset))
    first, last = overfit(task, steps=150, lr=3e-3)
    assert last < first / 10


def test_upsampler_trains_on_crops_and_runs_on_the_full_image_up_to_1024():
    from unclip.presets import load_preset
    from unclip.upsampler import Upsampler, UpsamplerConfig

    p = load_preset("upsampler", "sr1024-small")
    p["block_out_channels"] = tuple(p["block_out_channels"])
    model = Upsampler(UpsamplerConfig(**p)).eval()
    with torch.no_grad():
        crop = model(torch.randn(1, 3, 256, 256), torch.tensor([500]), torch.randn(1, 3, 256, 256))
        full = model(torch.randn(1, 3, 1024, 1024), torch.tensor([500]), torch.randn(1, 3, 1024, 1024))
    assert crop.shape == (1, 3, 256, 256) and full.shape == (1, 3, 1024, 1024)
    assert "attn" not in " ".join(n for n, _ in model.named_modules()), "upsamplers are convolution-only"


def test_degradations_are_per_sample_and_deterministic():
    from unclip.degrade import blur, degrade_blur, degrade_bsr

    x = torch.rand(2, 3, 32, 32) * 2 - 1
    flat = torch.zeros(1, 3, 16, 16) + 0.3
    torch.testing.assert_close(blur(flat, torch.tensor([1.5])), flat)  # a blur keeps a flat image
    sharp = torch.zeros(1, 1, 9, 9)
    sharp[..., 4, 4] = 1
    assert blur(sharp, torch.tensor([1.0]))[..., 4, 4] < 0.5
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    a, b = degrade_blur(x, 4, gens()), degrade_blur(x, 4, gens())
    assert a.shape == (2, 3, 8, 8) and torch.equal(a, b)
    c = degrade_bsr(x, 4, gens())
    assert c.shape == (2, 3, 8, 8) and torch.equal(c, degrade_bsr(x, 4, gens())) and c.abs().max() <= 1


def test_ar_prior_quantizer_roundtrip_and_overfit(built_dataset, tiny_clip_dir, monkeypatch):
    from unclip.ar_prior import ARPriorTask

    task = ARPriorTask(_cfg("ar_prior", built_dataset, tiny_clip_dir))
    q = task.model.quantizer
    z = torch.nn.functional.normalize(torch.from_numpy(task.cond.image_embed[:16].astype("float32")), dim=-1)
    codes = q.encode(z)
    assert codes.shape == (16, task.model.dims) and codes.max() < task.config.buckets
    recon = q.decode(codes)
    assert torch.nn.functional.cosine_similarity(recon, z).mean() > 0.5
    first, last = overfit(task, steps=150, lr=3e-3)
    assert last < first / 10
    b = task.batch([0, 1], [torch.Generator().manual_seed(i) for i in range(2)], "cpu")
    out = task.model.generate(b["text_hidden"], b["text_mask"], b["text_embed"], torch.Generator().manual_seed(0))
    assert out.shape == (2, 384)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    # sampling with the KV cache sees the logits a full forward pass gives for the codes it drew
    m, logits, codes = task.model, [], []
    head, embed = m.head.forward, m.code_embedding.forward
    m.head.forward = lambda h: logits.append(head(h)) or logits[-1]
    m.code_embedding.forward = lambda c: codes.append(c) or embed(c)
    try:
        m.generate(b["text_hidden"], b["text_mask"], b["text_embed"], torch.Generator().manual_seed(0))
    finally:
        del m.head.forward, m.code_embedding.forward
    dot = torch.randint(m.config.dot_buckets // 2, m.config.dot_buckets, (2,), generator=torch.Generator().manual_seed(0))
    drawn = torch.stack(codes, 1)  # (2, dims)
    full = m(b["text_hidden"], b["text_mask"], b["text_embed"], dot, drawn)  # (2, dims, buckets)
    torch.testing.assert_close(torch.stack(logits, 1), full, atol=1e-4, rtol=1e-4)
    # classifier-free guidance: the cached, doubled batch gives what teacher forcing gives for the caption and
    # for the empty caption (the encoding training dropped to), combined as u + s(c - u), on the codes drawn
    e_t, e_hidden, e_mask = task.cond.text([0], torch.tensor([True]))  # "" as training's dropped captions
    logits.clear(), codes.clear()
    probs, multinomial = [], torch.multinomial
    monkeypatch.setattr(torch, "multinomial", lambda p, *a, **k: probs.append(p) or multinomial(p, *a, **k))
    m.head.forward = lambda h: logits.append(head(h)) or logits[-1]
    m.code_embedding.forward = lambda c: codes.append(c) or embed(c)
    try:
        guided = m.generate(b["text_hidden"], b["text_mask"], b["text_embed"], torch.Generator().manual_seed(0),
                            guidance_scale=3.0, uncond=(e_hidden, e_mask, e_t))
    finally:
        del m.head.forward, m.code_embedding.forward
    drawn = torch.stack([c[:2] for c in codes], 1)  # (2, dims): both halves read the same codes
    assert all(torch.equal(c[:2], c[2:]) for c in codes) and guided.shape == (2, 384)
    cond = m(b["text_hidden"], b["text_mask"], b["text_embed"], dot, drawn)
    free = m(e_hidden.expand(2, -1, -1), e_mask.expand(2, -1), e_t.expand(2, -1), dot, drawn)
    got = torch.stack(logits, 1)  # (4, dims, buckets): the caption's rows, then the empty caption's
    torch.testing.assert_close(got[:2], cond, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[2:], free, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.stack(probs, 1), torch.softmax(free + 3.0 * (cond - free), -1), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="needs uncond"):
        m.generate(b["text_hidden"], b["text_mask"], b["text_embed"], guidance_scale=2.0)
    with pytest.raises(ValueError, match="finite"):
        m.generate(b["text_hidden"], b["text_mask"], b["text_embed"], guidance_scale=float("nan"))


def test_ar_prior_layers_start_at_gpt2_scale():
    """Embeddings and projections around the GPT-2 blocks start as GPT-2's own (std 0.02): with PyTorch's
    N(0, 1) embeddings the input token swamped what the blocks add and the prior learned nothing from the
    caption in 1,251 steps."""
    from unclip.ar_prior import ARPrior, ARPriorConfig

    m = ARPrior(ARPriorConfig(), dims=64)
    for layer in (m.text_in, m.text_embed_in, m.dot_embedding, m.code_embedding, m.head):
        assert abs(float(layer.weight.std()) - m.gpt.config.initializer_range) < 0.002, layer
        assert getattr(layer, "bias", None) is None or not layer.bias.any()


def test_ar_prior_from_weights_trains_on_the_codes_of_its_own_quantizer(built_dataset, tiny_clip_dir, tmp_path):
    """--init-from: a fresh task fits its own PCA and buckets; loading a model must bring the model's quantizer
    and re-encode the training codes with it, or the model learns codes its sampler decodes differently."""
    from unclip.ar_prior import ARPriorTask

    task = ARPriorTask(_cfg("ar_prior", built_dataset, tiny_clip_dir))
    with torch.no_grad():
        task.model.quantizer.edges.mul_(0.5)  # buckets fit on other data
    task.model.save(tmp_path / "m")
    fresh = ARPriorTask(_cfg("ar_prior", built_dataset, tiny_clip_dir))
    assert not torch.equal(fresh.codes, task.model.quantizer.encode(_image_embeds(fresh)))
    fresh.load_weights(tmp_path / "m")
    assert torch.equal(fresh.model.quantizer.edges, task.model.quantizer.edges)
    assert torch.equal(fresh.codes, task.model.quantizer.encode(_image_embeds(fresh)))


def _image_embeds(task):
    return torch.from_numpy(task.cond.image_embed[:].astype("float32"))


def test_decoder_training_writes_previews_at_checkpoints(built_dataset, tiny_clip_dir, tmp_path):
    from PIL import Image

    from unclip.train import train

    cfg = TrainConfig(stage="decoder", preset="tiny", data=built_dataset, out=tmp_path / "run", max_steps=2,
                      batch_size=2, options={"clip": str(tiny_clip_dir)})
    train(cfg, log=lambda m: None)
    im = Image.open(tmp_path / "run" / "previews" / "step0000002.png")
    assert im.size[1] == 2 * 16 and im.size[0] % 16 == 0  # held-out images over their reconstructions
    cfg.out, cfg.previews = tmp_path / "quiet", False  # --no-previews: the checkpoint without the picture
    train(cfg, log=lambda m: None)
    assert (cfg.out / "checkpoint").exists() and not (cfg.out / "previews").exists()


def test_resume_refuses_a_checkpoint_trained_with_another_clip(built_dataset, tiny_clip_dir, tmp_path):
    import shutil

    from unclip.clip import CLIPConfig, LockedTextCLIP
    from unclip.presets import load_preset
    from unclip.train import train

    cfg = TrainConfig(stage="prior", preset="tiny", data=built_dataset, out=tmp_path / "run", max_steps=1, batch_size=2,
                      options={"clip": str(tiny_clip_dir)})
    train(cfg, log=lambda m: None)
    other = tmp_path / "clip2"
    torch.manual_seed(1)
    LockedTextCLIP(CLIPConfig(**load_preset("clip", "tiny"))).save(other)
    cfg2 = TrainConfig(**{**cfg.__dict__, "max_steps": 2, "resume": True, "options": {"clip": str(other)}})
    with pytest.raises(ValueError, match="trained on other inputs"):
        train(cfg2, log=lambda m: None)
    shutil.rmtree(other)


def test_upsampler_preview_shows_target_bicubic_and_model_rows(built_dataset, tmp_path):
    from PIL import Image

    from unclip.upsampler import UpsamplerTask

    task = UpsamplerTask(TrainConfig(stage="upsampler", preset="tiny", data=built_dataset))
    task.preview(task.model, tmp_path / "p.png", n=3)
    im = Image.open(tmp_path / "p.png")
    assert im.size[1] == 3 * 32 and im.size[0] % 32 == 0  # three rows: target, bicubic, model


def test_held_out_batches_repeat_a_small_split_and_refuse_an_empty_one(built_dataset, tiny_clip_dir, tmp_path):
    import numpy as np
    import pytest

    from unclip.conditioning import Conditioning

    cond = Conditioning(built_dataset, "heldout_images", tiny_clip_dir)
    k = len(cond)
    b = cond.fixed_batch(k + 3)
    assert len(b["image_embed"]) == k + 3  # every row a timestep of the held-out loss, even past the split's size
    assert np.allclose(b["image_embed"][k:k + 3], b["image_embed"][:3]) and np.allclose(b["text_embed"][k], b["text_embed"][0])
    cond.images = cond.images[:0]
    with pytest.raises(ValueError, match="no images in the heldout_images split"):
        cond.fixed_batch(4)


def test_fixed_width_captions_leave_the_decoder_loss_unchanged(built_dataset, tiny_clip_dir):
    """Static shapes for torch.compile pad every batch's tokens to the split's longest caption; the
    padding is masked, so the loss is the one of the batch padded to its own longest caption."""
    from unclip.decoder import DecoderTask
    from unclip.train import sample_generator

    task = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir))
    cond = task.cond
    tokens = cond.token_offsets[1:] - cond.token_offsets[:-1]  # per caption
    short = [i for i in range(len(cond))  # images whose captions all fall short of the longest
             if tokens[cond.offsets[i]:cond.offsets[i + 1]].max() < cond.longest()][:3]
    gens = lambda: [sample_generator(0, 0, i) for i in range(len(short))]  # noqa: E731
    loose = task.batch(short, gens(), "cpu")
    task.static_shapes()
    fixed = task.batch(short, gens(), "cpu")
    assert len(short) == 3 and fixed["text_hidden"].shape[1] == cond.longest() > loose["text_hidden"].shape[1]
    assert torch.equal(fixed["text_hidden"][:, :loose["text_hidden"].shape[1]], loose["text_hidden"])
    with torch.no_grad():
        (a, _), (b, _) = task.loss(task.model, loose), task.loss(task.model, fixed)
    assert float(a) == pytest.approx(float(b), rel=1e-5)


def test_compiled_training_keeps_the_eager_state_dict(built_dataset, tiny_clip_dir, tmp_path):
    from unclip.train import train
    from unclip.weights import load_safetensors

    from torch._dynamo.utils import counters

    runs = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        torch.manual_seed(0)
        counters.clear()
        cfg = TrainConfig(stage="decoder", preset="tiny", data=built_dataset, out=tmp_path / name, max_steps=2,
                          batch_size=2, compile=compile_, options={"clip": str(tiny_clip_dir)})
        runs[name] = (train(cfg, log=lambda m: None), load_safetensors(tmp_path / name / "checkpoint" / "model.safetensors"))
    assert counters["stats"]["unique_graphs"] > 0  # the compiled run did compile (the eager one left none)
    (r0, w0), (r1, w1) = runs["eager"], runs["compiled"]
    assert list(w0) == list(w1)  # no "_orig_mod." prefixes: checkpoints interchangeable with eager runs
    assert r1["loss"] == pytest.approx(r0["loss"], rel=1e-3)  # the same step, within the compiler's rounding
    assert max(float((w0[k] - w1[k]).abs().max()) for k in w0) < 1e-3


def test_compile_refuses_the_clip_stage_with_a_clear_error(built_dataset, tmp_path):
    from unclip.train import train

    cfg = TrainConfig(stage="clip", preset="tiny", data=built_dataset, out=tmp_path / "run", max_steps=1, batch_size=2,
                      compile=True)
    with pytest.raises(ValueError, match="--compile is not available for the clip stage"):
        train(cfg, log=lambda m: None)


def test_a_fine_tune_keeps_the_loss_options_its_decoder_was_trained_with(built_dataset, tiny_clip_dir, tmp_path):
    """The exported config records the options used; --init-from takes them unless the run sets its own."""
    from unclip.decoder import Decoder, DecoderTask

    trained = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, high_noise_floor=0.05, dc_weight=0.002))
    trained.export(trained.model, tmp_path / "m")
    assert Decoder.load(tmp_path / "m").config.loss_options == {"min_snr_gamma": 5.0, "high_noise_floor": 0.05,
                                                                "dc_weight": 0.002, "dropout": 0.0,
                                                                "embed_noise": 0.0, "clip_weight": 0.0,
                                                                "focus_from": 0.0, "focus_to": 1000.0,
                                                                "focus_share": 0.0}
    tuned = DecoderTask(TrainConfig(stage="decoder", data=built_dataset, init_from=tmp_path / "m",
                                    options={"clip": str(tiny_clip_dir), "dc_weight": 0.0}))
    assert (tuned.high_noise_floor, tuned.dc_weight, tuned.gamma) == (0.05, 0.0, 5.0)
    plain = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir))
    assert (plain.high_noise_floor, plain.dc_weight) == (0.0, 0.0)


def test_decoder_dropout_acts_in_training_only(built_dataset, tiny_clip_dir, tmp_path):
    """--option dropout=P reaches every dropout of the UNet: training outputs vary between calls, eval
    ones do not, and a loaded export samples without it."""
    from unclip.decoder import Decoder, DecoderTask

    task = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, dropout=0.3))
    assert {m.p for m in task.model.unet.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    assert task.config.loss_options["dropout"] == 0.3  # recorded: a fine-tune keeps it
    batch = task.batch(torch.arange(2), [torch.Generator().manual_seed(i) for i in range(2)], "cpu")
    for p in task.model.unet.conv_out.parameters():  # zero-initialised out conv would hide the difference
        torch.nn.init.normal_(p, std=0.1)
    task.model.train()
    with torch.no_grad():
        a, b = (task.model(*(batch[k] for k in ("x0", "t", "image_embed", "text_embed", "text_hidden", "text_mask")))
                for _ in range(2))
        assert not torch.equal(a, b)
        task.model.eval()
        c, d = (task.model(*(batch[k] for k in ("x0", "t", "image_embed", "text_embed", "text_hidden", "text_mask")))
                for _ in range(2))
    assert torch.equal(c, d)
    task.export(task.model, tmp_path / "m")
    loaded = Decoder.load(tmp_path / "m")  # what sampling uses: the option is recorded, not applied
    assert loaded.config.loss_options["dropout"] == 0.3
    assert {m.p for m in loaded.unet.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    with pytest.raises(ValueError, match="dropout must be in"):
        DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, dropout=1.0))


def test_decoder_embed_noise_moves_z_i_by_its_size_and_keeps_its_norm(built_dataset, tiny_clip_dir):
    """--option embed_noise=S: training z_i at cosine ~1/sqrt(1 + S^2) from the clean one, norms kept;
    0 leaves the batch exactly as before (the pinned runs do not move)."""
    from unclip.decoder import DecoderTask

    def batch(task):
        return task.batch(torch.arange(8), [torch.Generator().manual_seed(i) for i in range(8)], "cpu")

    clean = batch(DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir)))
    noisy = batch(DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, embed_noise=0.5)))
    for k in clean:  # the same draws for everything else
        if k != "image_embed":
            assert torch.equal(clean[k], noisy[k]), k
    z, zn = clean["image_embed"], noisy["image_embed"]
    assert torch.allclose(zn.norm(dim=-1), z.norm(dim=-1), atol=1e-5)
    cos = torch.nn.functional.cosine_similarity(z, zn, dim=-1)
    assert cos.mean().item() == pytest.approx(1 / (1 + 0.5 ** 2) ** 0.5, abs=0.03)
    with pytest.raises(ValueError, match="embed_noise must be in"):
        DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, embed_noise=-0.1))


def test_a_resumed_decoder_run_keeps_its_checkpoints_loss(built_dataset, tiny_clip_dir, tmp_path):
    """The starting model's recorded options changing after a run began do not change the run's loss."""
    from unclip.decoder import DecoderTask

    trained = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, high_noise_floor=0.05, dc_weight=0.002))
    trained.export(trained.model, tmp_path / "m")
    cfg = TrainConfig(stage="decoder", data=built_dataset, init_from=tmp_path / "m", options={"clip": str(tiny_clip_dir)})
    task = DecoderTask(cfg)
    assert (task.high_noise_floor, task.dc_weight) == (0.05, 0.002)  # a new run: the starting model's
    task.restore_state({"loss_options": {"min_snr_gamma": 5.0, "high_noise_floor": 0.0, "dc_weight": 0.0}})
    assert (task.high_noise_floor, task.dc_weight) == (0.0, 0.0)  # a resumed one: its checkpoint's
    assert task.checkpoint_state()["loss_options"]["high_noise_floor"] == 0.0
    task.restore_state({"config": {"options": {"clip": "x", "high_noise_floor": 0.1}}})  # a checkpoint before the record
    assert (task.high_noise_floor, task.dc_weight) == (0.1, 0.0)
    cfg.options["dc_weight"] = 0.01  # an option given to the resumed run wins
    task.restore_state({"loss_options": {"min_snr_gamma": 5.0, "high_noise_floor": 0.05, "dc_weight": 0.002}})
    assert (task.high_noise_floor, task.dc_weight) == (0.05, 0.01)


def test_decoder_clip_weight_adds_the_clip_consistency_of_x0_for_kept_z_i_only(built_dataset, tiny_clip_dir):
    """--option clip_weight=W adds W * min(sqrt(SNR), 1) * (1 - cos(CLIP(x0_pred), z_i)) per sample, 0 where
    z_i was dropped; the target is the clean z_i under embed_noise; gradients reach the decoder, not CLIP."""
    from unclip.decoder import DecoderTask
    from unclip.train import sample_generator

    base = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, embed_noise=0.5))
    task = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, embed_noise=0.5, clip_weight=0.7))
    task.model.load_state_dict(base.model.state_dict())
    for p in task.model.unet.conv_out.parameters():  # zero-initialised out conv: ε̂ = 0 would hide the x0 path
        torch.nn.init.normal_(p, std=0.1)
    base.model.load_state_dict(task.model.state_dict())
    batch = task.batch([0, 1, 2, 3], [sample_generator(0, 0, i) for i in range(4)], "cpu")
    assert torch.equal(batch["clip_target"], task.cond.image_embeds([0, 1, 2, 3]))  # clean, not noised
    assert not torch.equal(batch["clip_target"], batch["image_embed"])
    batch["t"] = torch.tensor([100, 400, 700, 900])
    batch["image_dropped"] = torch.tensor([False, False, False, True])
    (l0, _), (l1, logs) = base.loss(base.model, batch), task.loss(task.model, batch)
    with torch.no_grad():
        sched = task.schedule
        x_t = sched.q_sample(batch["x0"], batch["t"], batch["noise"])
        eps = task.model(x_t, batch["t"], batch["image_embed"], batch["text_embed"], batch["text_hidden"],
                         batch["text_mask"], batch["image_dropped"])[:, :3]
        z = task.cond.clip.encode_image(sched.predict_x0(x_t, batch["t"], eps).clamp(-1, 1))
        cos = torch.nn.functional.cosine_similarity(z, batch["clip_target"], dim=-1)
        w = sched.snr(batch["t"]).sqrt().clamp(max=1) * torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert float((l1 - l0).detach()) == pytest.approx(float((0.7 * w * (1 - cos)).mean()), rel=1e-4, abs=1e-7)
    assert float(logs["clip_cos"]) == pytest.approx(float(cos[:3].mean()), rel=1e-5)
    (l1 - l0).backward()
    assert task.model.unet.conv_out.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in task.cond.clip.parameters())
    assert task.config.loss_options["clip_weight"] == 0.7  # recorded: a fine-tune keeps it
    with pytest.raises(ValueError, match="clip_weight must be >= 0"):
        DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, clip_weight=-1))


def test_image_drop_1_trains_a_caption_only_decoder_that_keeps_its_rates(built_dataset, tiny_clip_dir, tmp_path):
    """--option image_drop=1 (GLIDE-like): every training z_i is the null one, the held-out loss ignores z_i,
    the export and a fine-tune of it keep the rates, a resumed run takes its checkpoint's; bad rates are errors."""
    from unclip.decoder import Decoder, DecoderTask

    task = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, image_drop=1, caption_drop=0.2))
    batch = task.batch(torch.arange(8), [torch.Generator().manual_seed(i) for i in range(8)], "cpu")
    assert batch["image_dropped"].all()
    for p in task.model.parameters():  # a zero-initialised out conv would make every loss equal
        torch.nn.init.normal_(p, std=0.05)
    before = task.heldout_loss(task.model, n=4)
    task._heldout["image_embed"] = torch.randn_like(task._heldout["image_embed"])
    assert task.heldout_loss(task.model, n=4) == before
    plain = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir))
    plain.model.load_state_dict(task.model.state_dict())
    assert plain.heldout_loss(plain.model, n=4) != before  # a z_i-conditioned decoder's reads z_i
    assert task.checkpoint_state()["drop_rates"] == {"image_drop": 1.0, "caption_drop": 0.2}
    task.export(task.model, tmp_path / "m")
    assert (Decoder.load(tmp_path / "m").config.image_drop, Decoder.load(tmp_path / "m").config.caption_drop) == (1.0, 0.2)
    tuned = DecoderTask(TrainConfig(stage="decoder", data=built_dataset, init_from=tmp_path / "m",
                                    options={"clip": str(tiny_clip_dir)}))
    assert (tuned.config.image_drop, tuned.config.caption_drop) == (1.0, 0.2)
    tuned.restore_state({"drop_rates": {"image_drop": 0.1, "caption_drop": 0.5}})
    assert (tuned.config.image_drop, tuned.config.caption_drop) == (0.1, 0.5)
    with pytest.raises(ValueError, match="image_drop must be in"):
        DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, image_drop=1.5))


def test_v_ramp_rotation_recovers_eps_and_is_eps_below_and_v_above():
    """r = cos φ ε − sin φ x0 with φ from the ramp: ε below t_a, v above t_b, θ/2 half-way; ε comes back
    from r and x_t at every t; an error in r moves the implied x0 by sin θ / cos(θ − φ), not tan θ."""
    from unclip.diffusion import Schedule, eps_from_rotated, noise_angle, ramp_angle, rotated_target

    sched = Schedule()
    t = torch.tensor([0, 300, 700, 800, 850, 900, 950, 999])
    theta = noise_angle(sched.alphas_cumprod, t)
    assert torch.allclose(theta.cos() ** 2, sched.alphas_cumprod[t], atol=1e-6)
    phi = ramp_angle(theta, t, (800, 900))
    assert torch.equal(phi[:4], torch.zeros(4)) and torch.equal(phi[5:], theta[5:])
    assert float(phi[4]) == pytest.approx(float(theta[4]) / 2)
    x0, eps = torch.rand(8, 3, 4, 4) * 2 - 1, torch.randn(8, 3, 4, 4)
    x_t = sched.q_sample(x0, t, eps)
    r = rotated_target(eps, x0, phi)
    assert torch.equal(r[:4], eps[:4])
    v = theta.cos()[:, None, None, None] * eps - theta.sin()[:, None, None, None] * x0
    assert torch.allclose(r[5:], v[5:], atol=1e-6)
    assert torch.allclose(eps_from_rotated(r, x_t, theta, phi), eps, atol=1e-4)
    delta = 0.01 * torch.randn(8, 3, 4, 4)  # the same error in the prediction, in either parameterization
    x0_err = (sched.predict_x0(x_t, t, eps_from_rotated(r + delta, x_t, theta, phi)) - x0).abs().amax((1, 2, 3))
    x0_err_eps = (sched.predict_x0(x_t, t, eps + delta) - x0).abs().amax((1, 2, 3))
    assert float(x0_err[7]) < 0.05 and float(x0_err_eps[7]) > 100 * float(x0_err[7])  # t = 999: ×1 vs ×2e4
    assert torch.allclose(ramp_angle(theta, t, (850, 850)), torch.where(t >= 850, theta, 0.0))  # a step


def test_decoder_v_ramp_keeps_eps_below_t_a_and_roundtrips(tmp_path):
    """A decoder given a v_ramp returns the same ε below t_a, bit for bit, a different one above (its
    network's output now reads as r); raw=True is that output; the ramp is saved, validated and loaded."""
    from unclip.decoder import Decoder, DecoderConfig

    d = Decoder(DecoderConfig(sample_size=16, block_out_channels=(16, 32), attention_head_dim=8,
                              cross_attention_dim=32, norm_num_groups=8, clip_embed_dim=24)).eval()
    for p in d.unet.conv_out.parameters():  # zero-initialised: every output would be 0 either way
        torch.nn.init.normal_(p, std=0.1)
    args = (torch.randn(4, 3, 16, 16), torch.tensor([10, 699, 800, 990]), torch.randn(4, 24), torch.randn(4, 24),
            torch.randn(4, 5, 24), torch.ones(4, 5, dtype=torch.bool))
    with torch.no_grad():
        plain = d(*args)
        d.config.v_ramp = (700, 900)
        ramped, raw = d(*args), d(*args, raw=True)
        one_t = d(args[0], torch.tensor(990), *args[2:])  # a scalar t, as the samplers pass it
    assert torch.equal(ramped[:2], plain[:2]) and torch.equal(raw, plain)
    assert not torch.allclose(ramped[2:, :3], plain[2:, :3]) and torch.equal(ramped[:, 3:], plain[:, 3:])
    assert torch.allclose(one_t[3], ramped[3], atol=1e-5)
    d.save(tmp_path / "m")
    assert Decoder.load(tmp_path / "m").config.v_ramp == (700, 900)
    for bad in ((900, 700), (0, 1000), (1.5, 3), "700,900", (None, 5)):
        with pytest.raises(ValueError, match="v_ramp is two timesteps"):
            DecoderConfig(v_ramp=bad)


def test_decoder_task_v_ramp_trains_r_and_focus_draws_noisy_steps(built_dataset, tiny_clip_dir):
    """--option v_ramp: below t_a the loss is the ε loss as before, above t_b the v-MSE with weight 1 (plus
    L_vlb); it is kept across a resume. focus_share draws that share of t from focus_from up (to focus_to,
    exclusive), and 0 leaves every draw as it was."""
    from unclip.decoder import DecoderTask
    from unclip.train import sample_generator

    plain = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, high_noise_floor=0.05))
    ramped = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, high_noise_floor=0.05, v_ramp=[600, 800]))
    for p in plain.model.unet.conv_out.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ramped.model.load_state_dict(plain.model.state_dict())
    gens = [sample_generator(0, 0, i) for i in range(3)]
    batch = plain.batch([0, 1, 2], gens, "cpu")
    with torch.no_grad():
        batch["t"] = torch.full((3,), 500)
        (l0, _), (l1, _) = plain.loss(plain.model, batch), ramped.loss(ramped.model, batch)
        assert float(l1) == pytest.approx(float(l0), rel=1e-5)
        batch["t"] = torch.full((3,), 950)
        l1, logs1 = ramped.loss(ramped.model, batch)
        m = ramped.model
        x_t = ramped.schedule.q_sample(batch["x0"], batch["t"], batch["noise"])
        r = m(x_t, batch["t"], batch["image_embed"], batch["text_embed"], batch["text_hidden"], batch["text_mask"],
              batch["image_dropped"], raw=True)[:, :3]
        theta = m.angles(batch["t"])[0][:, None, None, None]
        v = theta.cos() * batch["noise"] - theta.sin() * batch["x0"]
        assert float(l1 - logs1["vb"]) == pytest.approx(float((r - v).pow(2).mean()), rel=1e-4)
    assert ramped.checkpoint_state()["v_ramp"] == (600, 800)
    resumed = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir))
    resumed.restore_state(ramped.checkpoint_state())
    assert resumed.model.config.v_ramp == (600, 800)

    def draws(task):
        return task.batch(list(range(8)) * 32, [sample_generator(0, 0, i) for i in range(256)], "cpu")

    focused = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, focus_from=750, focus_share=0.5))
    assert (draws(focused)["t"] >= 750).float().mean() == pytest.approx(0.5 + 0.5 * 0.25, abs=0.1)
    base, off = draws(plain), draws(DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, focus_share=0.0)))
    assert all(torch.equal(base[k], off[k]) for k in base)
    below = draws(DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, focus_to=900, focus_share=1.0)))
    assert int(below["t"].max()) < 900 and int(below["t"].min()) < 100  # all of 0..899, none of 900..999
    expert = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, focus_from=900, focus_share=1.0))
    served = draws(expert)
    assert int(served["t"].min()) >= 900
    for task, (lo, hi) in ((expert, (900, 1000)), (focused, (0, 1000)), (plain, (0, 1000))):  # held-out: where it trains
        task.heldout_loss(task.model, n=4)
        assert task._heldout["t"].tolist() == torch.linspace(lo, hi - 1, 4).long().tolist()
    assert (expert.heldout_measure(), focused.heldout_measure()) == ("t in [900, 1000)", None)  # with its checkpoints
    for bad in ({"focus_share": 1.5}, {"focus_from": 900, "focus_to": 900}, {"focus_to": 1001}):
        with pytest.raises(ValueError, match="focus_from and focus_to must satisfy"):
            DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir, **bad))


def test_a_high_noise_expert_runs_from_expert_from_up_and_roundtrips(tmp_path):
    """config.expert_from + DIR/decoder_expert: steps t >= expert_from are the expert's output (with its own
    null z_i under guidance), the rest the decoder's own; mixed batches pick per sample; saved and loaded
    with the model; a config naming an expert that is not there is one clear error."""
    from unclip.clip import TextEncoding
    from unclip.decoder import Decoder, DecoderConfig

    cfg = dict(sample_size=16, block_out_channels=(16, 32), attention_head_dim=8, cross_attention_dim=32,
               norm_num_groups=8, clip_embed_dim=24)
    base, expert = Decoder(DecoderConfig(**cfg, expert_from=500)).eval(), Decoder(DecoderConfig(**cfg)).eval()
    for m in (base, expert):
        for p in m.unet.conv_out.parameters():
            torch.nn.init.normal_(p, std=0.1)
    with torch.no_grad():
        expert.null_image_embed.normal_()
    args = (torch.randn(3, 3, 16, 16), torch.tensor([100, 500, 900]), torch.randn(3, 24), torch.randn(3, 24),
            torch.randn(3, 5, 24), torch.ones(3, 5, dtype=torch.bool), torch.tensor([False, True, True]))
    with torch.no_grad():
        alone = base(*args)
        base.expert = expert
        mixed, own, theirs = base(*args), base._own(*args), expert(*args)
    assert torch.equal(alone, own) and torch.equal(mixed[0], own[0]) and torch.equal(mixed[1:], theirs[1:])
    text = TextEncoding(torch.randn(2, 24), torch.randn(2, 5, 24), torch.ones(2, 5, dtype=torch.bool))
    empty = TextEncoding(torch.randn(1, 24), torch.randn(1, 5, 24), torch.ones(1, 5, dtype=torch.bool))
    z = torch.randn(2, 24)
    with torch.no_grad():  # guided at t = 900: the expert's own CFG, its null z_i in the unconditional half
        x = torch.randn(2, 3, 16, 16)
        a = base.guided_denoiser(z, text, empty, 3.0)(x, torch.tensor(900))
        b = expert.guided_denoiser(z, text, empty, 3.0)(x, torch.tensor(900))
    assert torch.equal(a, b)
    base.save(tmp_path / "m")
    loaded = Decoder.load(tmp_path / "m")
    assert loaded.expert is not None and loaded.config.expert_from == 500
    with torch.no_grad():
        assert torch.allclose(loaded(*args), mixed, atol=1e-2)  # fp16 weights
    plain = loaded.base()  # the expert stripped, weights shared, the loaded decoder untouched
    assert plain.expert is None and plain.config.expert_from is None and plain.unet is loaded.unet
    assert loaded.expert is not None and loaded.config.expert_from == 500
    from unclip.models import assemble

    out = assemble(tmp_path / "assembled", decoder=tmp_path / "m")  # a model directory takes the expert along
    assert Decoder.load(out).expert is not None
    import shutil
    shutil.rmtree(tmp_path / "m" / "decoder_expert")
    with pytest.raises(FileNotFoundError, match="names a high-noise expert"):
        Decoder.load(tmp_path / "m")
    with pytest.raises(ValueError, match="expert_from is a timestep"):
        DecoderConfig(expert_from=0)


def test_an_ar_prior_is_found_in_the_model_or_beside_it(tmp_path):
    from unclip.models import ar_prior_dir

    (tmp_path / "m").mkdir()
    assert ar_prior_dir(tmp_path / "m") == tmp_path / "m-ar_prior"  # the shipped model's layout
    (tmp_path / "m" / "ar_prior_config.json").write_text("{}")
    assert ar_prior_dir(tmp_path / "m") == tmp_path / "m"


def test_a_run_from_a_model_with_an_expert_trains_and_exports_one_decoder(built_dataset, tiny_clip_dir, tmp_path):
    import json

    from unclip.decoder import Decoder, DecoderTask

    trained = DecoderTask(_cfg("decoder", built_dataset, tiny_clip_dir))
    trained.export(trained.model, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "decoder_config.json").read_text())
    (tmp_path / "m" / "decoder_config.json").write_text(json.dumps({**cfg, "expert_from": 900}))
    trained.export(trained.model, tmp_path / "m" / "decoder_expert")
    assert Decoder.load(tmp_path / "m").expert is not None
    tuned = DecoderTask(TrainConfig(stage="decoder", data=built_dataset, init_from=tmp_path / "m",
                                    options={"clip": str(tiny_clip_dir)}))
    assert tuned.config.expert_from is None
    tuned.export(tuned.model, tmp_path / "run")
    assert Decoder.load(tmp_path / "run").expert is None  # loads: no expert named, none needed
