import json
import subprocess
import sys

import pytest
from PIL import Image

import unclip
from unclip.cli import main


def test_data_stats_json(built_dataset, capsys):
    assert main(["data", "stats", "--data", str(built_dataset), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["images"] == sum(v["images"] for v in s["splits"].values())
    assert set(s["splits"]) == {"train", "heldout_images", "heldout_concepts"}
    assert s["shard_bytes"] > 0


def test_data_stats_text(built_dataset, capsys):
    assert main(["data", "stats", "--data", str(built_dataset)]) == 0
    out = capsys.readouterr().out
    assert "distinct captions" in out and "fluent-3d" in out


def test_data_show_writes_a_contact_sheet(built_dataset, tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["data", "show", "--data", str(built_dataset), "-n", "6", "--out", str(out)]) == 0
    im = Image.open(out)
    assert im.width == 4 * 128 and im.height > 2 * 128


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "unclip", "data", "build", "--sources", "nope", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("unclip: error: unknown source 'nope'")
    r = subprocess.run([sys.executable, "-m", "unclip", "data", "stats", "--data", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "run `unclip data build` first" in r.stderr


def test_embed_then_train_a_stage_from_the_cli(built_dataset, tiny_clip_dir, tmp_path, capsys):
    assert main(["embed", "--data", str(built_dataset), "--clip", str(tiny_clip_dir)]) == 0
    out = capsys.readouterr().out
    assert "train:" in out and "z_i (" in out
    run = tmp_path / "run"
    assert main(["train", "prior", "--preset", "tiny", "--data", str(built_dataset), "--out", str(run), "--max-steps", "3",
                 "--batch-size", "4", "--option", f"clip={tiny_clip_dir}"]) == 0
    assert (run / "checkpoint" / "state.json").exists() and (run / "model" / "prior" / "config.json").exists()
    assert main(["train", "prior", "--preset", "nope", "--data", str(built_dataset), "--out", str(run)]) == 2


def test_presets_print_paper_sizes(capsys):
    assert main(["presets", "--json"]) == 0
    rows = {(r["stage"], r["preset"]): r["params"] for r in json.loads(capsys.readouterr().out)}
    # published sizes: Karlo prior 1B, decoder 900M, two 64->256 upsamplers 1.4B; the paper's ViT-H/16 632M
    assert abs(rows[("prior", "karlo")] / 1.0e9 - 1) < 0.05
    assert abs(rows[("decoder", "karlo")] / 0.9e9 - 1) < 0.05
    assert abs(2 * rows[("upsampler", "karlo")] / 1.4e9 - 1) < 0.05
    assert abs(rows[("clip", "paper")] / 632e6 - 1) < 0.05


def test_generate_writes_a_grid_with_its_parameters(tiny_model_dir, tmp_path):
    out = tmp_path / "g.png"
    assert main(["generate", "a grinning cat, 3D style", "--model", str(tiny_model_dir), "--num-images", "2",
                 "--prior-steps", "2", "--decoder-steps", "2", "--upsampler-steps", "2", "--out", str(out)]) == 0
    im = Image.open(out)
    assert im.size == (128, 64)
    params = json.loads(im.text["parameters"])
    assert params["prompt"] == "a grinning cat, 3D style" and params["seed"] == 0 and len(params["model_hash"]) == 12
    assert "trainedAlgorithmicMedia" in im.text["DigitalSourceType"]


def test_generate_with_a_guidance_interval_or_rerank_records_it_and_checks_it(tiny_model_dir, tmp_path):
    args = ["generate", "red heart", "--model", str(tiny_model_dir), "--num-images", "1", "--prior-steps", "2",
            "--decoder-steps", "3", "--no-upsample"]
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0
    assert main(args + ["--decoder-guidance-interval", "300,700", "--out", str(tmp_path / "b.png")]) == 0
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert json.loads(b.text["parameters"])["decoder_guidance_interval"] == [300, 700]
    assert "decoder_guidance_interval" not in json.loads(a.text["parameters"]) and "rerank" not in a.text["parameters"]
    assert main(args + ["--rerank", "3", "--out", str(tmp_path / "r.png")]) == 0
    assert json.loads(Image.open(tmp_path / "r.png").text["parameters"])["rerank"] == 3
    assert main(args + ["--rerank", "2", "--rerank-at", "1", "--out", str(tmp_path / "e.png")]) == 0
    assert json.loads(Image.open(tmp_path / "e.png").text["parameters"])["rerank_at"] == 1
    assert main(args + ["--rerank-at", "1", "--out", str(tmp_path / "f.png")]) == 2  # no candidates to compare
    assert not (tmp_path / "f.png").exists()
    assert a.tobytes() != b.tobytes()  # DDIM 3 steps: t = 999, 666, 333; the first is unguided in b
    for bad in ("700,300", "0,1000", "5", "a,b"):
        r = subprocess.run([sys.executable, "-m", "unclip", *args, "--decoder-guidance-interval", bad, "--out",
                            str(tmp_path / "c.png")], capture_output=True, text=True)
        assert r.returncode == 2 and "expected two timesteps LO,HI" in r.stderr, r.stderr
    assert not (tmp_path / "c.png").exists()


def test_generate_under_bf16_records_it_and_stays_close_to_fp32(tiny_model_dir, tmp_path):
    import numpy as np

    args = ["generate", "red heart", "--model", str(tiny_model_dir), "--num-images", "2", "--prior-steps", "2",
            "--decoder-steps", "3", "--upsampler-steps", "2", "--seed", "3"]
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0
    assert main(args + ["--precision", "bf16", "--out", str(tmp_path / "b.png")]) == 0
    assert main(args[:-1] + ["4", "--out", str(tmp_path / "c.png")]) == 0
    a, b, c = (Image.open(tmp_path / f"{n}.png") for n in "abc")
    assert json.loads(b.text["parameters"])["precision"] == "bf16"
    assert json.loads(a.text["parameters"])["precision"] == "fp32"

    def dist(x, y):
        return np.abs(np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)).mean()

    # not the same computation, and much nearer the fp32 image than another seed's (this random model
    # magnifies rounding: the shipped one moves by ~1% of the range)
    assert 0 < dist(a, b) < 0.5 * dist(a, c), (dist(a, b), dist(a, c))


def test_same_seed_same_settings_give_byte_identical_pngs(tiny_model_dir, tmp_path):
    args = ["generate", "red heart", "--model", str(tiny_model_dir), "--num-images", "2", "--prior-steps", "2",
            "--decoder-steps", "3", "--upsampler-steps", "2", "--sampler", "ddpm", "--seed", "5"]
    assert main(args + ["--out", str(tmp_path / "a.png")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.png")]) == 0
    assert main(args[:-1] + ["6", "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()


def test_assemble_copies_stage_exports_and_names_what_is_missing(tiny_model_dir, tmp_path):
    from unclip.models import assemble
    from unclip.pipeline import UnCLIPPipeline

    out = assemble(tmp_path / "m", clip=tiny_model_dir, prior=tiny_model_dir, decoder=tiny_model_dir)
    pipe = UnCLIPPipeline.from_pretrained(out)
    assert pipe.prior is not None and pipe.decoder is not None and pipe.upsampler is None
    import pytest

    with pytest.raises(FileNotFoundError, match="is not a upsampler export: missing super_res_first"):
        assemble(tmp_path / "m2", upsampler=tmp_path / "m")
    with pytest.raises(ValueError, match="source is the destination itself"):
        assemble(out, decoder=out)
    assert pipe.decoder is not None and (out / "decoder").is_dir()  # left as it was
    (out / "clip_pca.safetensors").write_bytes(b"stale")  # a PCA of another CLIP's z_i
    assemble(out, clip=tiny_model_dir)
    pca = tiny_model_dir / "clip_pca.safetensors"
    assert ((out / "clip_pca.safetensors").read_bytes() == pca.read_bytes()) if pca.exists() else not (out / "clip_pca.safetensors").exists()


def test_image_commands_check_their_outputs_and_lists_before_any_work(capsys):
    for argv in (["generate", "x", "--out", "cat.jpg"], ["vary", "a.png", "--out", "results/"],
                 ["edit", "a.png", "--from", "a", "--to", "b", "--thetas", "0,,1"],
                 ["edit", "a.png", "--from", "a", "--to", "b", "--thetas", "0,nan"], ["probe", "a.png", "--ks", "1,x"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    from unclip.cli.common import image_or_prompt

    assert image_or_prompt("a cat " * 60) == "a cat " * 60  # no "File name too long" from the path check
    err = capsys.readouterr().err
    assert "must end in .png" in err and "comma-separated floats" in err and "finite floats" in err and "ints" in err


def test_model_hash_covers_every_byte_and_the_configs(tiny_model_dir, tmp_path):
    import json
    import shutil

    from unclip.models import model_hash

    m = shutil.copytree(tiny_model_dir, tmp_path / "m")
    h = model_hash(m)
    f = m / "decoder" / "diffusion_pytorch_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 1  # one bit of the last tensor, far past the header
    f.write_bytes(bytes(data))
    h2 = model_hash(m)
    cfg = m / "decoder_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "guidance_scale": 1.5}))
    assert len({h, h2, model_hash(m)}) == 3


def test_vary_invert_interpolate_edit_from_the_cli(tiny_model_dir, tmp_path):
    from conftest import NPM

    src = tmp_path / "rocket.png"
    Image.open(NPM / "emoji-datasource-google/package/img/google/64/1f680.png").save(src)
    common = ["--model", str(tiny_model_dir), "--decoder-steps", "3"]
    assert main(["vary", str(src), "--num-images", "2", "--out", str(tmp_path / "v.png"), *common]) == 0
    params = json.loads(Image.open(tmp_path / "v.png").text["parameters"])
    assert params["decoder_guidance_scale"] == unclip.load(tiny_model_dir).default_decoder_guidance()  # not null
    assert main(["vary", str(src), "--num-images", "1", "--inversion", "--out", str(tmp_path / "vi.png"), *common]) == 0
    assert json.loads(Image.open(tmp_path / "vi.png").text["parameters"])["decoder_guidance_scale"] == 1.0
    assert main(["invert", str(src), "--out", str(tmp_path / "i.png"), *common]) == 0
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "i.safetensors")
    assert saved["latents"].shape == (1, 3, 16, 16) and saved["image_embeds"].shape == (1, 384)
    inverted = json.loads(Image.open(tmp_path / "i.png").text["parameters"])
    assert "psnr" in inverted and inverted["decoder_guidance_scale"] == 1.0
    assert main(["interpolate", str(src), str(src), "--frames", "3", "--out", str(tmp_path / "n.png"), *common]) == 0
    for ext in ("gif", "webp"):  # animations, there and back: 3 + 1 frames
        assert Image.open(tmp_path / f"n.{ext}").n_frames == 4
    assert main(["interpolate", "rocket", "pizza", "--frames", "2", "--out", str(tmp_path / "p.png"), *common]) == 0
    assert main(["edit", str(src), "--from", "rocket", "--to", "red rocket", "--thetas", "0,0.5",
                 "--out", str(tmp_path / "e.png"), *common]) == 0
    assert Image.open(tmp_path / "e.png").size == (2 * 64, 64)  # upsampled 16 -> 64
    edit = json.loads(Image.open(tmp_path / "e.png").text["parameters"])
    assert edit["decoder_guidance_scale"] == 1.0  # decoded from the inversion: its own guidance
    assert edit["precision"] == "fp32"


def test_image_commands_reject_bad_inputs(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not an image")
    r = subprocess.run([sys.executable, "-m", "unclip", "vary", str(bad), "--model", str(tiny_model_dir)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not a readable image" in r.stderr
    r = subprocess.run([sys.executable, "-m", "unclip", "vary", str(tmp_path / "none.png"), "--model", str(tiny_model_dir)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no image at" in r.stderr


def test_guided_pca_probe_and_empty_prompt_from_the_cli(tiny_model_dir, built_dataset, tmp_path):
    import shutil

    from conftest import NPM

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    common = ["--model", str(model), "--decoder-steps", "2"]
    assert main(["guided", "red heart", "--num-images", "2", "--cutn", "2", "--out", str(tmp_path / "g.png"), *common]) == 0
    params = json.loads(Image.open(tmp_path / "g.png").text["parameters"])
    assert params["task"] == "clip_guided" and params["clip_guidance_scale"] == 300.0
    src = tmp_path / "rocket.png"
    Image.open(NPM / "emoji-datasource-google/package/img/google/64/1f680.png").save(src)
    r = subprocess.run([sys.executable, "-m", "unclip", "probe", str(src), *common], capture_output=True, text=True)
    assert r.returncode == 2 and "unclip pca --model" in r.stderr  # no PCA yet: says how to make it
    assert main(["pca", "--model", str(model), "--data", str(built_dataset)]) == 0
    assert main(["probe", str(src), "--ks", "1,8,384", "--out", str(tmp_path / "p.png"), *common]) == 0
    assert Image.open(tmp_path / "p.png").size == (3 * 64, 64)
    r = subprocess.run([sys.executable, "-m", "unclip", "generate", "  ", "--model", str(model)], capture_output=True, text=True)
    assert r.returncode == 2 and "the prompt is empty" in r.stderr


def test_bench_generate_json(tiny_model_dir, capsys, monkeypatch):
    import unclip.fastpath

    tuned = []
    monkeypatch.setattr(unclip.fastpath, "tune_malloc", lambda: tuned.append(1) or True)
    assert main(["bench", "generate", "--model", str(tiny_model_dir), "--num-images", "1", "--repeats", "1",
                 "--samplers", "ddpm,dpm++", "--malloc", "default", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["malloc"] == "default" and tuned == []  # glibc's own malloc, as a plain script gets
    rows = {row["sampler"]: row for row in r["samplers"]}
    assert rows["ddpm"]["decoder_steps"] == 50 and rows["dpm++"]["decoder_steps"] <= 50 / 4
    assert rows["ddpm"]["time_vs_ddpm"] == 1.0 and rows["dpm++"]["seconds"] > 0 and r["peak_rss_mb"] > 0
    assert main(["bench", "generate", "--model", str(tiny_model_dir), "--num-images", "1", "--repeats", "1",
                 "--samplers", "dpm++", "--diffusers", "--precisions", "fp32,bf16", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["malloc"] == "tuned" and tuned == [1]  # as every unclip command
    d = r["vs_diffusers"]
    assert d["max_abs_diff"] < 1e-4 and d["ours_s"] > 0 and d["diffusers_s"] > 0 and d["steps"] == [25, 25, 7]
    assert d["bf16_max_abs_diff"] > d["max_abs_diff"] and d["ours_bf16_s"] > 0  # bf16: its own contestant
    assert [row["precision"] for row in r["samplers"]] == ["fp32", "bf16"]
