import json

import numpy as np
import pytest
import torch

from unclip.evaluate import frechet_distance, mean_pairwise_distance, precision_recall


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_frechet_distance_against_the_eigenvalue_formula():
    a = torch.randn(300, 6, generator=_gen()) @ torch.randn(6, 6, generator=_gen(1))
    b = torch.randn(200, 6, generator=_gen(2)) @ torch.randn(6, 6, generator=_gen(3)) + 0.5
    ca, cb = torch.cov(a.T.double()), torch.cov(b.T.double())
    ref = float((a.double().mean(0) - b.double().mean(0)).pow(2).sum() + ca.trace() + cb.trace()
                - 2 * torch.linalg.eigvals(ca @ cb).real.clamp(min=0).sqrt().sum())  # tr √(ΣaΣb) via eigenvalues
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + 2.0) == pytest.approx(4 * 6, rel=1e-6)  # a pure shift: |Δμ|²


def test_precision_recall_and_diversity():
    real = torch.randn(100, 4, generator=_gen())
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100) == (0.0, 0.0)
    collapsed = real[:1] + 1e-3 * torch.randn(100, 4, generator=_gen(1))  # mode collapse onto one real sample
    p, r = precision_recall(real, collapsed)
    assert p == 1.0 and r <= 0.02
    e = torch.eye(4)
    assert mean_pairwise_distance(e) == pytest.approx(1.0)
    assert mean_pairwise_distance(e[:1].repeat(3, 1)) == pytest.approx(0.0)


def test_evaluate_end_to_end_with_a_convnext_judge(tiny_model_dir, built_dataset):
    import unclip
    from unclip.clip import CLIPConfig, LockedTextCLIP
    from unclip.evaluate import evaluate, paired

    torch.manual_seed(0)
    judge = LockedTextCLIP(CLIPConfig(image_tower="convnext", image_size=16, depths=(1, 1), hidden_sizes=(8, 16),
                                      embed_dim=32))
    r = evaluate(unclip.load(tiny_model_dir), judge, built_dataset, n=4, diversity_prompts=2, diversity_samples=2,
                 batch=2, generate_kwargs={"prior_steps": 2, "decoder_steps": 2, "upsampler_steps": 2}, progress=False)
    for split in ("heldout_images", "heldout_concepts"):
        m = r["splits"][split]
        assert m["prompts"] == 4 and m["fd"] >= 0 and m["fd_ci95"][0] <= m["fd_ci95"][1] and m["kid_se"] > 0 and m["clip_score_se"] >= 0
        assert all(0 <= m[k] <= 1 for k in ("precision", "recall", "top1", "top5", "top1_real", "top5_real"))
        assert m["top1"] <= m["top5"] and -1 <= m["clip_score"] <= 1
        pp = m["per_prompt"]  # the summaries are the per-prompt values' means
        rank = np.asarray(pp["concept_rank"])
        assert len(pp["prompts"]) == 4 and rank.min() >= 1 and m["top5"] == (rank <= 5).mean()
        assert m["clip_score"] == pytest.approx(np.mean(pp["clip_score"])) and m["concept_mrr"] == pytest.approx((1 / rank).mean())
    assert r["diversity"]["prompts"] == 2 and 0 <= r["diversity"]["generated"] <= 2
    assert all(v["mean"] == 0 and v["ci95"] == [0, 0] for m in paired(r, r).values() for v in m.values())
    calls = []
    pipe = unclip.load(tiny_model_dir)

    def counted(prompts, g):
        calls.append(len(prompts))
        return pipe(prompts, 1, generator=g, output_type="pt", prior_steps=2, decoder_steps=2, upsampler_steps=2).images * 2 - 1

    w = evaluate(pipe, judge, built_dataset, n=4, diversity_prompts=0, batch=2, generate=counted, progress=False,
                 warmup=True)
    assert calls == [2] * 5  # one untimed warm-up call, then two timed batches per split
    assert all(w["splits"][k]["per_prompt"] == r["splits"][k]["per_prompt"] for k in r["splits"])  # the same images
    for m in r["splits"].values():  # the leak-free subset is the flagged prompts' numbers
        flags = np.asarray(m["per_prompt"]["leak_free"])
        assert m["leak_free"]["prompts"] == flags.sum()
        if flags.any():
            assert m["leak_free"]["top5"] == (np.asarray(m["per_prompt"]["concept_rank"])[flags] <= 5).mean()


def test_leak_free_flags_near_copies_and_gender_or_direction_twins(monkeypatch):
    import unclip.embed
    from unclip.data.build import concept_family
    from unclip.evaluate import leak_free

    assert concept_family("woman teacher") == concept_family("teacher") == concept_family("man teacher")
    assert concept_family("woman running: facing right") == concept_family("person running")
    assert concept_family("dragon face") != concept_family("dragon") and concept_family("manatee") != concept_family("mantis")
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    held = np.stack([train[0] // 2 + train[0] // 2, rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), train[2]])
    packs = {"train": (train, {"concepts": ["a", "b", "c"], "concept_labels": ["teacher", "cat", "dog"]}),
             "heldout_images": (held, {"concepts": ["a", "b", "x"], "concept_labels": ["teacher", "cat", "owl"]}),
             "heldout_concepts": (held, {"concepts": ["t", "u", "v"], "concept_labels": ["woman teacher", "owl", "cat face"]})}
    monkeypatch.setattr(unclip.embed, "image_pack", lambda data, split: packs[split])
    # a near copy of its concept's training image; a new picture; a copy of another concept's image (allowed)
    assert leak_free(None, "heldout_images", np.arange(3)).tolist() == [False, True, True]
    assert leak_free(None, "heldout_concepts", np.arange(3)).tolist() == [False, True, True]


def test_paired_comparison_finds_a_small_shift_and_refuses_other_prompts():
    from unclip.evaluate import paired

    rng = np.random.default_rng(0)
    spread = rng.normal(0.3, 0.1, 64)  # prompt-to-prompt spread 0.1, improvement 0.01 on every prompt
    ranks = rng.integers(1, 50, 64)

    def report(clip, rank, prompts=None, seed=0):
        per = {"prompts": prompts or [f"p{i}" for i in range(64)], "clip_score": list(clip), "concept_rank": list(rank)}
        return {"n": 64, "seed": seed, "splits": {"heldout_concepts": {"per_prompt": per}}}

    base, better = report(spread, ranks), report(spread + 0.01, np.maximum(ranks - 1, 1))
    d = paired(base, better)["heldout_concepts"]
    assert d["clip_score"]["mean"] == pytest.approx(0.01) and d["clip_score"]["ci95"][0] > 0  # unpaired CIs overlap
    assert d["concept_mrr"]["mean"] > 0 and d["concept_mrr"]["ci95"][0] > 0 and d["top5"]["mean"] >= 0
    assert paired(better, base)["heldout_concepts"]["clip_score"]["ci95"][1] < 0
    with pytest.raises(ValueError, match="different prompts"):
        paired(base, report(spread, ranks, prompts=[f"q{i}" for i in range(64)]))
    with pytest.raises(ValueError, match="other seeds"):
        paired(base, report(spread, ranks, seed=1))
    old = report(spread, ranks)
    del old["splits"]["heldout_concepts"]["per_prompt"]
    with pytest.raises(ValueError, match="no per-prompt results"):
        paired(old, base)


def test_tiling_score_sees_repetition():
    from unclip.report import tiling_score

    g = torch.Generator().manual_seed(0)
    motif = torch.rand(1, 3, 8, 8, generator=g)
    tiled = motif.repeat(1, 1, 4, 4)  # a 4×4 repetition of one motif
    blob = torch.zeros(1, 3, 32, 32)
    blob[..., 10:22, 10:22] = torch.rand(1, 3, 12, 12, generator=g)  # one object on a plain background
    assert tiling_score(tiled) > 0.95 and tiling_score(blob) < 0.5


def test_report_runs_every_section_and_writes_markdown(tiny_model_dir, built_dataset, tmp_path):
    import unclip
    from unclip.clip import CLIPConfig, LockedTextCLIP
    from unclip.report import SECTIONS, keep_sections, run_report

    torch.manual_seed(0)
    judge = LockedTextCLIP(CLIPConfig(image_tower="convnext", image_size=16, depths=(1, 1), hidden_sizes=(8, 16),
                                      embed_dim=32))
    pipe = unclip.load(tiny_model_dir)
    r = run_report(pipe, judge, built_dataset, tmp_path, n=2, diversity_prompts=1, diversity_samples=2,
                   log=lambda *_: None)
    assert set(r["sections"]) == set(SECTIONS)
    assert [row["decoder_guidance"] for row in r["sections"]["guidance"]] == [1.0, 1.0, 3.0, 3.0, 8.0, 8.0]
    samplers = [row["sampler"] for row in r["sections"]["samplers"]]
    assert samplers == ["ddpm", "ddim", "dpm++", "diffusers UnCLIPPipeline (ddpm)"]  # peers on the same weights
    md = (tmp_path / "report.md").read_text()
    for title in ("Headline", "Decoder conditioning", "Guidance", "autoregressive", "Samplers", "CLIP-guided"):
        assert title in md
    for f in ("headline.png", "guidance.png", "samplers.png", "clip_guided.png", "results.json"):
        assert (tmp_path / "report" / f).exists()
    # one section again: the others are kept from results.json (same weights and settings)...
    same = dict(n=2, diversity_prompts=1, diversity_samples=2, sections=["priors"], log=lambda *_: None)
    again = run_report(pipe, judge, built_dataset, tmp_path, **same)
    assert again["sections"]["headline"] == json.loads(json.dumps(r["sections"]["headline"]))
    assert set(again["sections"]) == set(SECTIONS) and "Headline" in (tmp_path / "report.md").read_text()
    stored = tmp_path / "report" / "results.json"
    for change in ({"n": 3}, {"settings": {**again["settings"], "judge": "another judge"}}):
        assert keep_sections(stored, {**again, "sections": {}, **change}, ["priors"]) == []  # other settings
    # ...but not once the decoder has changed: they would describe another model
    with torch.no_grad():
        next(pipe.decoder.parameters()).add_(1e-3)
    changed = run_report(pipe, judge, built_dataset, tmp_path, **same)
    assert set(changed["sections"]) == {"priors"}
    # decoder images judged, but our samplers also timed to 256 px (diffusers' always upsamples)
    small = run_report(pipe, judge, built_dataset, tmp_path / "s", n=2, sections=["samplers"], upsample=False,
                       compare_diffusers=False, log=lambda *_: None)
    assert all(row["seconds_per_image_256"] > 0 for row in small["sections"]["samplers"])


def test_report_compares_unclip_with_a_separately_trained_glide_like_decoder(tiny_model_dir, built_dataset, tmp_path,
                                                                            capsys):
    """--glide-decoder: the guidance section adds a caption-only decoder of the same size at every scale, on a
    pipeline that shares the other stages (the model's own decoder untouched); its weights are part of the
    settings that keep sections; a decoder that reads z_i, or of another size, is refused with a clear error."""
    import unclip
    from unclip.cli import main
    from unclip.clip import CLIPConfig, LockedTextCLIP
    from unclip.decoder import Decoder, DecoderConfig
    from unclip.report import GLIDE, check_glide, module_hash, run_report

    torch.manual_seed(0)
    judge = LockedTextCLIP(CLIPConfig(image_tower="convnext", image_size=16, depths=(1, 1), hidden_sizes=(8, 16),
                                      embed_dim=32))
    pipe = unclip.load(tiny_model_dir)
    own = module_hash(pipe.decoder)
    glide = Decoder(DecoderConfig(**{**pipe.decoder.config.__dict__, "image_drop": 1.0, "caption_drop": 0.2}))
    check_glide(pipe, glide)
    r = run_report(pipe, judge, built_dataset, tmp_path, n=2, diversity_prompts=1, diversity_samples=2,
                   sections=["guidance"], glide=glide, log=lambda *_: None)
    rows = r["sections"]["guidance"]
    assert [(row["decoder_guidance"], row["setting"]) for row in rows[:3]] == [
        (1.0, "unCLIP"), (1.0, "caption-only decoder"), (1.0, GLIDE)]
    own_glide = module_hash(glide)
    assert len(rows) == 9 and module_hash(pipe.decoder) == own and r["settings"]["glide"] == own_glide
    assert rows[1]["fd"] != rows[2]["fd"]  # another decoder's images
    assert "separately trained caption-only decoder of the same size" in (tmp_path / "report.md").read_text()
    from PIL import Image

    assert Image.open(tmp_path / "report" / "glide.png").size == (2 * 64, 3 * 64)  # a row of n samples per decoder
    # another section run later without the GLIDE-like decoder keeps the guidance section and its decoder's hash...
    same = dict(n=2, diversity_prompts=1, diversity_samples=2, sections=["priors"], log=lambda *_: None)
    later = run_report(pipe, judge, built_dataset, tmp_path, **same)
    assert later["sections"]["guidance"] == json.loads(json.dumps(rows)) and later["settings"]["glide"] == own_glide
    # ...but not with another GLIDE-like decoder: its rows would describe other weights
    with torch.no_grad():
        next(glide.parameters()).add_(1e-3)
    assert "guidance" not in run_report(pipe, judge, built_dataset, tmp_path, glide=glide, **same)["sections"]
    with pytest.raises(ValueError, match="must be caption-only"):
        check_glide(pipe, Decoder(pipe.decoder.config))
    wide = {**glide.config.__dict__, "block_out_channels": (16, 48)}
    with pytest.raises(ValueError, match="same size"):
        check_glide(pipe, Decoder(DecoderConfig(**wide)))
    assert main(["report", "--model", str(tiny_model_dir), "--glide-decoder", str(tmp_path / "none"),
                 "--out", str(tmp_path)]) == 2
    assert "no decoder_config.json there" in capsys.readouterr().err


def test_sampler_plot_draws_point_estimates(tmp_path):
    from unclip.report import _plot_samplers

    row = {"sampler": "ddim", "steps": "25/25/7", "seconds_per_image": 0.4, "fd": 296.5, "kid": 0.2, "kid_se": 0.01}
    _plot_samplers([row], tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_kid_is_unbiased_across_sample_sizes_where_fd_is_not():
    from unclip.evaluate import kid

    g = torch.Generator().manual_seed(0)
    real, same, shifted = torch.randn(1000, 32, generator=g), torch.randn(128, 32, generator=g), torch.randn(128, 32, generator=g) + 0.3
    for fake in (same, same[:16]):  # the same distribution: KID within its spread of 0 at n = 128 and 16
        m, sd = kid(real, fake)
        assert abs(m) < 2 * sd
    assert frechet_distance(real, same[:16]) > 3 * frechet_distance(real, same)  # FD: biased by n
    m, sd = kid(real, shifted)
    assert m > 5 * sd > 0


def test_kid_standard_error_matches_the_spread_over_generated_sets():
    from unclip.evaluate import kid

    g = torch.Generator().manual_seed(1)
    real = torch.randn(500, 16, generator=g)
    draws = [kid(real, torch.randn(48, 16, generator=g) * 1.2 + 0.2) for _ in range(150)]
    values, ses = torch.tensor([d[0] for d in draws]), torch.tensor([d[1] for d in draws])
    spread = float(values.std())  # the real uncertainty of one generated set's KID
    assert 0.7 < float(ses.mean()) / spread < 1.5  # the jackknife estimates it from one set
    same = kid(real, real[:48])  # a generated set from the reals themselves: KID 0 within its error
    assert abs(same[0]) < 3 * same[1]
    with pytest.raises(ValueError, match="feature sets of one width"):
        kid(real, torch.randn(48, 8))


def test_report_says_which_section_did_not_run():
    from unclip.report import render_markdown

    md = render_markdown({"model": "m", "n": 1, "seed": 0, "sections": {},
                          "skipped": {"priors": "this model has no autoregressive prior (ar_prior_config.json)"}})
    assert "## Diffusion vs autoregressive prior\n\nNot run: this model has no autoregressive prior" in md


def test_the_shipped_judge_is_another_architecture_and_eval_names_a_missing_judge(tmp_path, capsys):
    from unclip.cli import main
    from unclip.conditioning import load_clip_dir
    from unclip.models import JUDGE, SHIPPED

    judge = load_clip_dir(JUDGE)
    assert judge.config.image_tower == "convnext" and judge.embed_dim == 256
    assert load_clip_dir(SHIPPED).config.image_tower == "vit"  # the generator's CLIP is not the judge
    assert main(["eval", "--judge", str(tmp_path / "none"), "--model", str(SHIPPED)]) == 2
    assert "no judge at" in capsys.readouterr().err


def test_eval_from_the_cli_prints_both_splits(tiny_model_dir, built_dataset, tmp_path, capsys):
    import json

    from unclip.cli import main
    from unclip.clip import CLIPConfig, LockedTextCLIP

    torch.manual_seed(0)
    LockedTextCLIP(CLIPConfig(image_tower="convnext", image_size=16, depths=(1, 1), hidden_sizes=(8, 16),
                              embed_dim=32)).save(tmp_path / "judge")
    assert main(["eval", "--model", str(tiny_model_dir), "--judge", str(tmp_path / "judge"), "--data", str(built_dataset),
                 "--n", "2", "--diversity-prompts", "1", "--diversity-samples", "2", "--prior-steps", "2",
                 "--decoder-steps", "2", "--no-upsample", "--reconstructions", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(r["splits"]) == {"heldout_images", "heldout_concepts"} and r["generate"]["upsample"] is False
    assert r["reconstruction"]["images"] == 3 and 0 <= r["reconstruction"]["top1"] <= r["reconstruction"]["top5"] <= 1
    assert "images" not in r["splits"]["heldout_images"] and r["seconds_per_image"] > 0
    (tmp_path / "base.json").write_text(json.dumps(r))
    args = ["eval", "--model", str(tiny_model_dir), "--judge", str(tmp_path / "judge"), "--data", str(built_dataset),
            "--n", "2", "--diversity-prompts", "0", "--prior-steps", "2", "--decoder-steps", "2", "--no-upsample",
            "--reconstructions", "0", "--paired-with", str(tmp_path / "base.json")]
    assert main(args) == 0  # the same model, prompts and seeds: every paired difference is exactly 0
    assert "heldout_concepts  minus base.json, same prompts: clip_score +0.0000 [+0.0000, +0.0000]" in capsys.readouterr().out
    assert main(args[:3] + ["--decoder-guidance", "1"] + args[3:] + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["paired_with"]["splits"]["heldout_images"]
    assert d["clip_score"]["mean"] != 0 and d["clip_score"]["ci95"][0] <= d["clip_score"]["mean"] <= d["clip_score"]["ci95"][1]
    assert main(args[:3] + ["--best-of", "3"] + args[3:] + ["--json"]) == 0  # more prior samples to choose from
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["generate"]["best_of"] == 3
    assert main(args[:3] + ["--rerank", "2"] + args[3:] + ["--json"]) == 0  # two decoder images per prompt, one kept
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["generate"]["rerank"] == 2
    assert main(args[:3] + ["--rerank", "2", "--rerank-at", "1"] + args[3:] + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["generate"]["rerank_at"] == 1
    assert main(args[:5] + ["--prior", "image", "--rerank", "2"]) == 2
    assert "--prior image decodes each held-out image's own z_i once: drop --rerank" in capsys.readouterr().err
    assert main(args[:3] + ["--best-of", "3", "--prior", "image"] + args[3:]) == 2
    assert "drop --prior-steps, --prior-guidance and --best-of" in capsys.readouterr().err
    assert main(args[:3] + ["--best-of", "3", "--prior", "text"] + args[3:]) == 2
    assert "--prior text samples no prior: drop --prior-steps, --prior-guidance and --best-of" in capsys.readouterr().err
    assert main(args[:3] + ["--prior", "none"] + args[3:]) == 2  # args hold --prior-steps: refused, not ignored
    assert "--prior none samples no prior" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(args[:-1] + [str(tmp_path / "bad.json")]) == 2
    assert "not an `unclip eval --json` report" in capsys.readouterr().err


def test_eval_applies_lora_adapters_and_refuses_a_missing_one(tiny_model_dir, tmp_path, capsys):
    from unclip.cli import main

    assert main(["eval", "--model", str(tiny_model_dir), "--lora", str(tmp_path / "none.safetensors"), "--n", "1"]) == 2
    assert "none.safetensors" in capsys.readouterr().err


def test_reconstruction_scores_an_exact_decoder_perfectly_and_a_blind_one_by_chance(tiny_model_dir, built_dataset):
    import numpy as np

    import unclip
    from unclip.clip import CLIPConfig, LockedTextCLIP
    from unclip.clip_task import uint8_to_tensor
    from unclip.embed import image_pack
    from unclip.evaluate import judge_view, reconstruction

    torch.manual_seed(0)
    judge = LockedTextCLIP(CLIPConfig(image_tower="convnext", image_size=16, depths=(1, 1), hidden_sizes=(8, 16),
                                      embed_dim=32))
    view, clip = judge_view(judge, built_dataset), unclip.load(tiny_model_dir).clip
    images, _ = image_pack(built_dataset, "heldout_images")

    real = uint8_to_tensor(np.asarray(images))
    z_real = clip.encode_image(real)

    def exact(z, caps, g):  # the image whose z_i this is: what a perfect decoder of z_i would draw
        return real[(z @ z_real.T).argmax(1)]

    r = reconstruction(view, built_dataset, 4, 0, exact, clip)
    assert r["images"] == min(4, len(images)) and r["top1"] == 1.0 and abs(r["cosine"] - 1) < 1e-5
    blank = reconstruction(view, built_dataset, 4, 0, lambda z, caps, g: torch.ones(len(z), 3, 64, 64), clip)
    assert blank["cosine"] < 1 and blank["top1"] <= 0.5  # the same picture for all: one source at best


def test_the_oracle_prior_decodes_each_prompts_own_image_embedding(tiny_model_dir, built_dataset, tmp_path, capsys,
                                                                    monkeypatch):
    import json

    import numpy as np

    import unclip
    from unclip.cli import main
    from unclip.clip import CLIPConfig, LockedTextCLIP
    from unclip.clip_task import uint8_to_tensor
    from unclip.embed import image_pack
    from unclip.evaluate import own_embeds_generate

    pipe = unclip.load(tiny_model_dir)
    images, idx = image_pack(built_dataset, "heldout_concepts")
    k = len(images) - 1
    caption = idx["captions"][idx["caption_offsets"][k]]
    generate = own_embeds_generate(pipe, built_dataset, decoder_steps=2, upsample=False)
    got = generate([caption], torch.Generator().manual_seed(3))
    z_i = pipe.clip.encode_image(uint8_to_tensor(np.asarray(images[k:k + 1])))
    want = pipe.from_embeds(z_i, caption, decoder_steps=2, upsample=False, generator=torch.Generator().manual_seed(3),
                            output_type="pt").images * 2 - 1
    assert got.shape == (1, 3, 16, 16) and torch.equal(got, want)
    with pytest.raises(ValueError, match="no held-out image has the caption 'a caption of nothing'"):
        generate(["a caption of nothing"], None)
    import unclip.embed

    real_pack = unclip.embed.image_pack

    def pack_with_a_shared_caption(data, split, *a, **kw):  # image k's first caption made image 0's
        images, index = real_pack(data, split, *a, **kw)
        captions = list(index["captions"])
        captions[index["caption_offsets"][k]] = captions[index["caption_offsets"][0]]
        return images, {**index, "captions": captions}

    monkeypatch.setattr(unclip.embed, "image_pack", pack_with_a_shared_caption)
    with pytest.raises(ValueError, match="several held-out images have the caption"):
        own_embeds_generate(pipe, built_dataset, splits=("heldout_concepts",), decoder_steps=2,
                            upsample=False)([idx["captions"][0]], None)
    monkeypatch.undo()

    torch.manual_seed(0)
    LockedTextCLIP(CLIPConfig(image_tower="convnext", image_size=16, depths=(1, 1), hidden_sizes=(8, 16),
                              embed_dim=32)).save(tmp_path / "judge")
    assert main(["eval", "--model", str(tiny_model_dir), "--judge", str(tmp_path / "judge"), "--data", str(built_dataset),
                 "--n", "2", "--prior", "image", "--decoder-steps", "2", "--no-upsample", "--reconstructions", "0",
                 "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["prior"] == "image" and "diversity" not in r and set(r["splits"]) == {"heldout_images", "heldout_concepts"}


def _claim_row(setting, fd, clip, kid=None, **kw):
    kid = fd / 1000 if kid is None else kid  # apart when |Δ| > 2·hypot(se, se): KID 0.014, CLIP score 0.028
    return {"setting": setting, "fd": fd, "kid": kid, "kid_se": 0.005, "clip_score": clip, "clip_score_se": 0.01,
            "top5": 0.0, "seconds_per_image": 1.0, "tiling": 0.2, **kw}


def _diversity_rows(unclip_minus_caption: float, unclip_minus_glide: float | None = None):
    rows = []
    for g in (1.0, 3.0, 8.0):
        base = [0.50, 0.52, 0.49, 0.51]
        others = [] if unclip_minus_glide is None else [("GLIDE-like decoder", unclip_minus_caption - unclip_minus_glide)]
        for name, shift in [("unCLIP", unclip_minus_caption), ("caption-only decoder", 0.0)] + others:
            per = [b + shift + 0.01 * (i % 2) for i, b in enumerate(base)]
            rows.append({"decoder_guidance": g, "setting": name, "diversity": sum(per) / 4, "diversity_per_prompt": per})
    return rows


def test_claim_verdicts_follow_the_numbers_both_ways():
    from unclip.claims import verdicts
    from unclip.report import render_markdown

    sampler = {"dpm++": {"sampler": "dpm++", "steps": "6/12/2", "fd": 305, "kid": 0.305, "kid_se": 0.005,
                         "seconds_per_image": 0.5, "decoder_guidance": 3.0},
               "ref": {"sampler": "diffusers UnCLIPPipeline (ddpm)", "steps": "25/25/7", "fd": 300, "kid": 0.300,
                       "kid_se": 0.005, "seconds_per_image": 2.0, "decoder_guidance": 3.0}}
    good = {"conditioning": [_claim_row("caption only (no z_i)", 300, 0.20), _claim_row("z_t as z_i", 290, 0.25),
                             _claim_row("prior z_i (unCLIP)", 250, 0.30),
                             _claim_row("the image's own z_i (oracle prior)", 240, 0.31, top5=0.125)],
            "priors": [_claim_row("diffusion prior", 280, 0.30), _claim_row("autoregressive prior", 285, 0.35)],
            "clip_guided": [_claim_row("CLIP-guided (caption-conditioned decoder)", 400, 0.1, tiling=0.4),
                            _claim_row("unCLIP", 250, 0.3)],
            "samplers": [sampler["dpm++"], sampler["ref"]],
            "guidance": _diversity_rows(+0.1)}
    lines = verdicts(good)
    assert len(lines) == 5
    cond, guid, prior, samp, guided = lines
    assert "is the best conditioning** (paper): holds (KID better; CLIP score better)" in cond
    assert "top-5 12.5% (prior: 0.0%)" in cond and "KID 0.250 ± 0.005" in cond
    assert ": holds" in guid and "guidance 1:" not in guid  # guidance 1 is no guidance: not part of the claim
    assert "+0.100 ± 0.000 over 4 prompts" in guid
    assert ": mixed (KID not separated; CLIP score worse)" in prior  # KID 0.280 vs 0.285, CLIP 0.30 vs 0.35
    assert ": holds (KID not worse beyond chance)" in samp and "4.0× less time to 256 px" in samp  # 0.305 vs 0.300
    assert ": holds" in guided and "show more repeated motifs" in guided

    bad = {**good, "samplers": [{**sampler["dpm++"], "fd": 330, "kid": 0.330}, sampler["ref"]],
           "clip_guided": [_claim_row("CLIP-guided (caption-conditioned decoder)", 200, 0.4, tiling=0.1),
                           _claim_row("unCLIP", 250, 0.3)],
           "guidance": _diversity_rows(-0.1)}
    _, guid, _, samp, guided = verdicts(bad)
    assert ": does not hold" in guid and ": mixed" in samp  # 4× faster, but KID 0.330 is separated above 0.300
    assert ": does not hold (KID worse; CLIP score worse)" in guided and "show fewer repeated motifs" in guided
    near = {"conditioning": [good["conditioning"][0], _claim_row("z_t as z_i", 265, 0.29, kid=0.262),
                             good["conditioning"][2]],
            "guidance": _diversity_rows(0.0)}
    cond, guid = verdicts(near)
    assert "(paper): not separated (KID not separated; CLIP score not separated)" in cond  # 0.250 vs 0.262; 0.30 vs 0.29
    assert ": not separated." in guid
    glide = verdicts({"guidance": _diversity_rows(+0.1, unclip_minus_glide=-0.1)})[0]  # the GLIDE row decides
    assert ": does not hold" in glide and "-0.100 ± 0.000" in glide and "separately trained" in glide
    assert ": does not hold (KID worse beyond chance) on quality; time not compared" in verdicts(bad, upsample=False)[3]
    timed = {"samplers": [{**sampler["dpm++"], "seconds_per_image": 0.3, "seconds_per_image_256": 1.0}, sampler["ref"]]}
    line = verdicts(timed, upsample=False)[0]  # decoder-only images judged, but ours also timed to 256 px
    assert ": mixed (KID not worse beyond chance). " in line and "2.0× less time to 256 px (ours 1.00 s/image)" in line
    # a report from before KID: no valid interval, said so; rows at different guidance: not resolved
    old = {"conditioning": [{k: v for k, v in r.items() if not k.startswith("kid") and not k.endswith("_se")}
                            for r in good["conditioning"]],
           "samplers": [sampler["dpm++"], {**sampler["ref"], "decoder_guidance": None}],
           "guidance": [{k: v for k, v in r.items() if k != "diversity_per_prompt"} for r in good["guidance"]]}
    old["conditioning"][2]["kid"], old["conditioning"][2]["kid_std"] = 0.25, 0.02  # the first KID reports
    cond, guid, samp = verdicts(old)
    assert "holds (FD on point estimates only (no interval in this report: not resolved)" in cond
    assert "Prior z_i KID 0.250 (spread 0.020), FD 250.0" in cond
    assert ": holds on point estimates only (no interval: not resolved)" in guid
    assert "not resolved: the rows ran at different decoder guidance" in samp
    one = {"priors": [{**r, "clip_score_se": float("nan")} for r in good["priors"]]}  # one prompt: no error
    assert "(KID not separated; CLIP score not separated)" in verdicts(one)[0]
    md = render_markdown({"model": "m", "n": 16, "seed": 0, "sections": {"priors": good["priors"]}})
    assert "## The paper's claims at this scale" in md and "autoregressive prior** (paper): " in md
    assert "claims at this scale" not in render_markdown({"model": "m", "n": 16, "seed": 0, "sections": {}})
