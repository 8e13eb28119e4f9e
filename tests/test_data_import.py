"""`unclip data import`: folders (imagefolder metadata, sidecar captions) and WebDataset tars."""

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
from pathlib import Path
import pytest
from PIL import Image

from unclip.cli import main

GOOGLE = "emoji-datasource-google/package/img/google/64"


def _emoji_bytes(name):
    from conftest import NPM

    return (NPM / GOOGLE / name).read_bytes()


def _folder(tmp_path):
    src = tmp_path / "icons"
    src.mkdir()
    (src / "cat.png").write_bytes(_emoji_bytes("1f408.png"))
    (src / "pizza.png").write_bytes(_emoji_bytes("1f355.png"))
    (src / "copy.png").write_bytes(_emoji_bytes("1f355.png"))  # exact duplicate
    (src / "broken.png").write_bytes(b"\x89PNG truncated")
    (src / "nocap.png").write_bytes(_emoji_bytes("0023-fe0f-20e3.png"))
    rows = [{"file_name": "cat.png", "text": "a cat, my style"}, {"file_name": "pizza.png", "text": ["pizza", "a slice"]},
            {"file_name": "copy.png", "text": "pizza again"}, {"file_name": "broken.png", "text": "broken"}]
    (src / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return src


def test_imagefolder_metadata_counts_skips_and_is_readable_by_the_stages(tmp_path, capsys):
    from unclip.embed import image_pack

    src, out = _folder(tmp_path), tmp_path / "out"
    assert main(["data", "import", str(src), "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["counts"]["images"] == 2 and r["counts"]["captions"] == 4  # the duplicate's caption joins the kept image
    assert r["skipped"] == {"corrupt": 1, "uncaptioned": 1, "duplicates": 1, "no_image": 0}
    assert r["uncaptioned_examples"] == ["nocap.png"] and r["style"] == "icons"
    imgs = {s: image_pack(out, s) for s in ("train", "heldout_images", "heldout_concepts")}
    assert sum(len(v[0]) for v in imgs.values()) == 2 and len(imgs["train"][0]) >= 1 and len(imgs["heldout_images"][0]) == 1
    caps = sorted(c for _, idx in imgs.values() for c in idx["captions"])
    assert caps == ["a cat, my style", "a slice", "pizza", "pizza again"]
    assert imgs["train"][0].shape[1:] == (64, 64, 3)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert main(["data", "import", str(src), "--out", str(out)]) == 0  # unchanged input: nothing redone
    assert "up to date" in capsys.readouterr().out and (out / "manifest.json").stat().st_mtime_ns == mtime
    assert main(["data", "import", str(src), "--out", str(out), "--default-caption", "an icon", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["images"] == 3  # the uncaptioned image kept


def test_sidecar_txt_and_metadata_csv(tmp_path, capsys):
    a = tmp_path / "a"
    a.mkdir()
    (a / "cat.png").write_bytes(_emoji_bytes("1f408.png"))
    (a / "cat.txt").write_text("a cat\n\nsitting cat\n")
    assert main(["data", "import", str(a), "--out", str(tmp_path / "oa"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["captions"] == 2
    b = tmp_path / "b"
    b.mkdir()
    (b / "x.png").write_bytes(_emoji_bytes("1f355.png"))
    (b / "metadata.csv").write_text('\ufefffile_name,text\nx.png,"pizza, flat"\n', encoding="utf-8")  # as Excel saves it
    assert main(["data", "import", str(b), "--out", str(tmp_path / "ob"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["images"] == 1


def test_webdataset_tars_as_img2dataset_writes_them(tmp_path, capsys):
    shard = tmp_path / "00000.tar"
    jpg = io.BytesIO()
    Image.open(io.BytesIO(_emoji_bytes("1f408.png"))).convert("RGB").save(jpg, "JPEG")
    with tarfile.open(shard, "w") as tar:
        for name, data in [("000000000.jpg", jpg.getvalue()), ("000000000.txt", b"a cat photo"),
                           ("000000001.png", _emoji_bytes("1f355.png")), ("000000001.json", b'{"caption": "pizza"}'),
                           ("000000002.txt", b"caption without image")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "o"
    assert main(["data", "import", str(shard), "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["counts"]["images"] == 2 and r["skipped"]["no_image"] == 1


def test_a_source_with_no_usable_image_is_one_clear_line(tmp_path):
    src = tmp_path / "empty"
    src.mkdir()
    (src / "a.png").write_bytes(b"not an image")
    r = subprocess.run([sys.executable, "-m", "unclip", "data", "import", str(src), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    last = r.stderr.strip().splitlines()[-1]  # (above it: the progress bar)
    assert r.returncode == 2 and last.startswith("unclip: error: no usable image in") and "Traceback" not in r.stderr


def test_imported_data_fine_tunes_a_model_stage(tiny_model_dir, tiny_clip_dir, tmp_path):
    src, out, run = _folder(tmp_path), tmp_path / "data", tmp_path / "run"
    assert main(["data", "import", str(src), "--out", str(out), "--default-caption", "an icon"]) == 0
    assert main(["embed", "--data", str(out), "--clip", str(tiny_clip_dir)]) == 0
    assert main(["train", "decoder", "--preset", "tiny", "--data", str(out), "--out", str(run), "--max-steps", "2",
                 "--batch-size", "2", "--init-from", str(tiny_model_dir), "--option", f"clip={tiny_clip_dir}"]) == 0
    assert (run / "model" / "decoder_config.json").exists()
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2
    assert np.isfinite([json.loads(line).get("loss", 0) for line in (run / "metrics.jsonl").read_text().splitlines()]).all()


def _import_and_fine_tune(tmp_path, model_dir, clip_dir, *extra, run: str = "run") -> Path:
    """Import the test folder, then fine-tune the decoder from `model_dir` with `extra` flags; the run dir."""
    src, out, run = tmp_path / "icons", tmp_path / "data", tmp_path / run
    if not src.exists():
        _folder(tmp_path)
    assert main(["data", "import", str(src), "--out", str(out), "--default-caption", "an icon"]) == 0
    assert main(["train", "decoder", "--preset", "tiny", "--data", str(out), "--out", str(run), "--batch-size", "2",
                 "--lr", "1e-2", "--init-from", str(model_dir), "--option", f"clip={clip_dir}", *extra]) == 0
    return run


def test_lora_fine_tune_saves_a_small_adapter_that_generation_loads(tiny_model_dir, tiny_clip_dir, tmp_path):
    import torch

    import unclip
    from unclip.lora import parse_lora_arg

    run = _import_and_fine_tune(tmp_path, tiny_model_dir, tiny_clip_dir, "--max-steps", "3", "--lora-rank", "4")
    lora = run / "model" / "lora.safetensors"
    full = sum(f.stat().st_size for f in (tiny_model_dir / "decoder").glob("*.safetensors"))
    assert lora.exists() and lora.stat().st_size < full / 2
    from safetensors.torch import load_file

    assert all("lora_" in k for k in load_file(lora))

    def draw(scale):
        pipe = unclip.load(tiny_model_dir)
        if scale is not None:
            pipe.load_lora(lora, scale)
        return pipe("an icon", prior_steps=2, decoder_steps=2, upsample=False, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    base = draw(None)
    torch.testing.assert_close(draw(0.0), base)  # scale 0: exactly the base model
    assert not torch.allclose(draw(1.0), base)  # the trained adapter changes the images
    assert parse_lora_arg("a/b.safetensors:0.5") == (Path("a/b.safetensors"), 0.5)
    assert parse_lora_arg("c:/x.safetensors") == (Path("c:/x.safetensors"), 1.0)
    assert main(["generate", "an icon", "--model", str(tiny_model_dir), "--lora", f"{lora}:0.7", "--num-images", "1",
                 "--prior-steps", "2", "--decoder-steps", "2", "--no-upsample", "--out", str(tmp_path / "g.png")]) == 0
    assert json.loads(Image.open(tmp_path / "g.png").text["parameters"])["lora"] == [f"{lora}:0.7"]


def test_train_only_freezes_everything_else(tiny_model_dir, tiny_clip_dir, tmp_path):
    from safetensors.torch import load_file

    run = _import_and_fine_tune(tmp_path, tiny_model_dir, tiny_clip_dir, "--max-steps", "2", "--train-only", "text_proj")
    before = load_file(next((tiny_model_dir / "decoder").glob("*.safetensors")))
    after = load_file(run / "checkpoint" / "model.safetensors")
    assert all(torch_equal(after["unet." + k], v) for k, v in before.items())  # the UNet did not move
    proj_before = load_file(next((tiny_model_dir / "text_proj").glob("*.safetensors")))
    assert any(not torch_equal(after["text_proj." + k], v) for k, v in proj_before.items())


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a.float(), b.float())


@pytest.fixture(scope="module")
def tiny_expert_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a high-noise expert: another random decoder of the same shape, steps t >= 500."""
    import shutil

    import torch

    from unclip.decoder import Decoder
    from unclip.models import attach_expert

    d = tmp_path_factory.mktemp("expert_model")
    shutil.copytree(tiny_model_dir, d, dirs_exist_ok=True)
    torch.manual_seed(1)
    expert = tmp_path_factory.mktemp("expert")
    Decoder(Decoder.load(tiny_model_dir).config).save(expert)
    attach_expert(d, expert, 500)
    return d


def test_attach_expert_makes_an_export_the_high_noise_expert(tiny_model_dir, tiny_expert_model_dir, tmp_path):
    import shutil

    from unclip.decoder import Decoder
    from unclip.models import attach_expert

    loaded = Decoder.load(tiny_expert_model_dir)
    assert loaded.config.expert_from == 500 and loaded.expert is not None
    assert not torch_equal(loaded.expert.unet.conv_in.weight, loaded.unet.conv_in.weight)  # its own weights
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    with pytest.raises(ValueError, match="expert_from is a timestep"):
        attach_expert(tmp_path / "m", tiny_expert_model_dir / "decoder_expert", 1000)
    with pytest.raises(ValueError, match="has a high-noise expert of its own"):
        attach_expert(tmp_path / "m", tiny_expert_model_dir, 500)
    with pytest.raises(FileNotFoundError, match="not a decoder export: missing"):
        attach_expert(tmp_path / "m", tmp_path, 500)
    shutil.copytree(tiny_expert_model_dir / "decoder_expert", tmp_path / "big")
    config = json.loads((tmp_path / "big" / "decoder_config.json").read_text())
    (tmp_path / "big" / "decoder_config.json").write_text(json.dumps({**config, "sample_size": 32}))
    with pytest.raises(ValueError, match="does not fit the decoder .* sample_size 32 vs 16"):
        attach_expert(tmp_path / "m", tmp_path / "big", 500)
    assert Decoder.load(tmp_path / "m").expert is None  # the refused calls changed nothing
    attach_expert(tmp_path / "m", tiny_expert_model_dir / "decoder_expert", 500)
    attach_expert(tmp_path / "m", tmp_path / "m" / "decoder_expert", 800)  # its own expert: a new expert_from
    again = Decoder.load(tmp_path / "m")
    assert again.config.expert_from == 800 and torch_equal(again.expert.unet.conv_in.weight,
                                                           loaded.expert.unet.conv_in.weight)
    assert sorted(p.name for p in (tmp_path / "m").iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_adapters_of_a_decoder_and_of_its_expert_each_go_to_their_own_network(tiny_model_dir, tiny_expert_model_dir,
                                                                               tiny_clip_dir, tmp_path):
    """A decoder run from a model with an expert adapts the decoder's own layers (t < expert_from); a run from
    MODEL/decoder_expert writes a "decoder_expert" adapter, which goes into the expert (t >= expert_from)."""
    import torch

    import unclip

    runs = {}
    for name, init in (("decoder", tiny_expert_model_dir), ("decoder_expert", tiny_expert_model_dir / "decoder_expert")):
        run = _import_and_fine_tune(tmp_path, init, tiny_clip_dir, "--max-steps", "3", "--lora-rank", "4", run=name)
        runs[name] = run / "model" / "lora.safetensors"

    def eps(pipe, t):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, pipe.decoder.config.sample_size, pipe.decoder.config.sample_size, generator=g)
        z_i = torch.nn.functional.normalize(torch.randn(1, pipe.clip.embed_dim, generator=g), dim=-1)
        text, _ = pipe.encode_prompt(["an icon"])
        with torch.no_grad():
            return pipe.decoder(x, torch.tensor([t]), z_i, text.text_embed, text.hidden_states, text.mask)

    plain = unclip.load(tiny_expert_model_dir)
    for name, lora in runs.items():
        pipe = unclip.load(tiny_expert_model_dir).load_lora(lora)
        changed = {t: not torch.allclose(eps(pipe, t), eps(plain, t), atol=1e-6) for t in (300, 700)}
        assert changed == ({300: True, 700: False} if name == "decoder" else {300: False, 700: True}), name
    both = unclip.load(tiny_expert_model_dir).load_lora(runs["decoder"]).load_lora(runs["decoder_expert"])
    assert both.decoder.lora_meta["stage"] == "decoder" and both.decoder.expert.lora_meta["stage"] == "decoder_expert"
    assert both.decoder.base().lora_meta["stage"] == "decoder"  # its layers still carry the adapter: one per stage
    with pytest.raises(ValueError, match="high-noise expert \\(decoder_expert\\), which this model does not have"):
        unclip.load(tiny_model_dir).load_lora(runs["decoder_expert"])


def test_a_fine_tune_recorded_before_experts_were_fine_tuned_resumes(tiny_expert_model_dir, tmp_path):
    """OUT/base.json written when a fine-tune's id left the expert out: the same weights, so the runs resume
    (the expert's run is added); other weights are still refused."""
    from unclip.finetune import START_FILES, check_base, weights_id

    (tmp_path / "runs").mkdir()
    old = weights_id(tiny_expert_model_dir, START_FILES[:-1])
    assert old != weights_id(tiny_expert_model_dir)
    (tmp_path / "base.json").write_text(json.dumps({"base": "x", "weights": old}))
    said = []
    check_base(tmp_path, tiny_expert_model_dir, said.append)
    assert "now fine-tuned too" in said[0]
    assert json.loads((tmp_path / "base.json").read_text())["weights"] == weights_id(tiny_expert_model_dir)
    (tmp_path / "base.json").write_text(json.dumps({"base": "x", "weights": "0" * 16}))
    with pytest.raises(ValueError, match="holds a fine-tune of other base weights"):
        check_base(tmp_path, tiny_expert_model_dir)


@pytest.mark.parametrize("lora,expert", [(0, False), (2, False), (0, True), (2, True)])
def test_finetune_one_command(tiny_model_dir, built_dataset, tmp_path, capsys, monkeypatch, lora, expert, request):
    from unclip.embed import image_pack

    monkeypatch.setenv("UNCLIP_CACHE", str(tmp_path / "cache"))

    base = request.getfixturevalue("tiny_expert_model_dir") if expert else tiny_model_dir
    src, out = _folder(tmp_path), tmp_path / "ft"
    args = ["finetune", str(src), "--out", str(out), "--base", str(base), "--steps", "5", "--batch-size", "2",
            "--default-caption", "an icon", "--json"] + ([] if lora else ["--base-data", str(built_dataset)])
    assert main(args + (["--lora-rank", str(lora)] if lora else [])) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    r = json.loads(lines[-1])
    stages = ["decoder", "prior"] + (["decoder_expert"] if expert else [])  # a base's expert is fine-tuned too
    assert sorted(r["stages"]) == sorted(stages) and r["stages"]["decoder"]["steps"] == 5
    assert any("min for 5 steps" in line for line in lines)  # the time it will take, said before it runs
    if lora:
        assert sorted(p.name for p in (out / "lora").iterdir()) == sorted(f"{s}.safetensors" for s in stages)
        pipe = __import__("unclip").load(base).load_lora(out / "lora")
        assert pipe.decoder.lora_meta["stage"] == "decoder"
        assert not expert or pipe.decoder.expert.lora_meta["stage"] == "decoder_expert"
    else:
        assert (out / "model" / "decoder_config.json").exists() and (out / "model" / "clip.safetensors").exists()
    if expert and not lora:  # the fine-tuned expert, attached with the base's expert_from
        from safetensors.torch import load_file

        from unclip.decoder import Decoder

        assert Decoder.load(out / "model").config.expert_from == 500
        tuned, was = (load_file(d / "decoder_expert" / "decoder" / "diffusion_pytorch_model.safetensors")
                      for d in (out / "model", base))
        assert tuned.keys() == was.keys() and any(not torch_equal(tuned[k], was[k]) for k in was)
        # each network trained on the timesteps it draws: the decoder below expert_from, the expert from it up
        spans = {s: (o["focus_from"], o["focus_to"], o["focus_share"]) for s in ("decoder", "decoder_expert")
                 for o in [json.loads((out / "runs" / s / "model" / "decoder_config.json").read_text())["loss_options"]]}
        assert spans == {"decoder": (0, 500, 1), "decoder_expert": (500, 1000, 1)}
    from unclip.finetune import weights_id

    assert json.loads((out / "base.json").read_text())["weights"] == weights_id(base)  # checked on a re-run
    im = Image.open(out / "before_after.png")
    n = len(json.loads(im.text["parameters"])["prompts"])
    assert n >= 1 and im.size == (n * 64, 2 * 64)  # a row before, a row after
    style = r["style_retrieval"]
    if lora:  # no base dataset in this test's cache: said, not guessed
        assert style == {"skipped": f"no base dataset at {tmp_path / 'cache' / 'data' / 'emoji'}"}
    else:  # the new style among the fixture dataset's styles, for the real held-out image, base and fine-tuned
        base_styles = set(image_pack(built_dataset, "train")[1]["styles"])
        assert style["style"] == "icons" and style["styles"] == len(base_styles) + 1 and style["prompts"] == 1
        assert all(style[k] in (0.0, 1.0) and sum(style[f"{k}_styles"].values()) == 1 for k in ("real", "before", "after", "before_prior", "after_prior", "before_own", "after_own"))


def test_style_probe_fits_the_styles_and_weights_a_small_one_as_much(built_dataset, tiny_clip_dir):
    import numpy as np
    import torch

    from unclip.conditioning import load_clip_dir
    from unclip.embed import clip_embeddings, image_pack
    from unclip.finetune import StyleProbe

    clip = load_clip_dir(tiny_clip_dir)
    probe = StyleProbe(clip, tiny_clip_dir, [built_dataset])
    styles = image_pack(built_dataset, "train")[1]["styles"]
    assert probe.names == sorted(set(styles))
    z = torch.from_numpy(np.asarray(clip_embeddings(built_dataset, "train", clip, tiny_clip_dir)["image_embed"], np.float32))
    picked = probe(z)
    per_style = {s: np.mean([p == s for p, t in zip(picked, styles) if t == s]) for s in probe.names}
    assert min(per_style.values()) >= 0.5, per_style  # every style learned, not only the large ones
    assert probe(z[:3]) == picked[:3]  # per image, not per batch


def test_init_from_round_trip_loads_the_source_weights_exactly(tiny_model_dir, tiny_clip_dir, tmp_path):
    from safetensors.torch import load_file

    run = _import_and_fine_tune(tmp_path, tiny_model_dir, tiny_clip_dir, "--max-steps", "1", "--lr", "0")
    after = load_file(run / "checkpoint" / "model.safetensors")
    for part in ("decoder", "text_proj"):
        src = load_file(next((tiny_model_dir / part).glob("*.safetensors")))
        prefix = "unet." if part == "decoder" else "text_proj."
        assert src and all(torch_equal(after[prefix + k], v) for k, v in src.items()), part


def _trained_lora(tmp_path, tiny_model_dir, tiny_clip_dir) -> Path:
    run = _import_and_fine_tune(tmp_path, tiny_model_dir, tiny_clip_dir, "--max-steps", "3", "--lora-rank", "4")
    return run / "model" / "lora.safetensors"


def test_lora_output_equals_the_merged_model(tiny_model_dir, tiny_clip_dir, tmp_path):
    import torch
    from peft.tuners.lora import LoraLayer

    import unclip

    lora = _trained_lora(tmp_path, tiny_model_dir, tiny_clip_dir)

    def eps(pipe):  # one decoder call (a whole sampling run would amplify float rounding at t = 999)
        text, _ = pipe.encode_prompt(["an icon"])
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, pipe.decoder.config.sample_size, pipe.decoder.config.sample_size, generator=g)
        z_i = torch.nn.functional.normalize(torch.randn(1, pipe.clip.embed_dim, generator=g), dim=-1)
        with torch.no_grad():
            return pipe.decoder(x, torch.tensor([500]), z_i, text.text_embed, text.hidden_states, text.mask)

    adapted = unclip.load(tiny_model_dir).load_lora(lora, 0.7)
    out = eps(adapted)
    for m in adapted.decoder.modules():
        if isinstance(m, LoraLayer):
            m.merge()  # W += 0.7 ΔW, adapters then bypassed
    merged = {k.replace(".base_layer", ""): v for k, v in adapted.decoder.state_dict().items() if "lora_" not in k}
    plain = unclip.load(tiny_model_dir)
    plain.decoder.load_state_dict(merged)  # a model without peft, with the merged weights
    torch.testing.assert_close(eps(plain), out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(eps(unclip.load(tiny_model_dir)), out, atol=1e-3)  # and the adapter did something


def test_a_lora_that_does_not_fit_is_a_clear_error(tiny_model_dir, tiny_clip_dir, tmp_path):
    import pytest
    import torch
    from safetensors.torch import load_file, save_file

    import unclip

    lora = _trained_lora(tmp_path, tiny_model_dir, tiny_clip_dir)
    meta = {"unclip_lora": json.dumps({"stage": "decoder", "rank": 4, "alpha": 4, "targets": []})}
    tensors = load_file(lora)
    dropped = dict(list(tensors.items())[1:])
    save_file(dropped, tmp_path / "missing.safetensors", meta)
    wrong = {k: (torch.zeros(v.shape[0] + 1, *v.shape[1:], dtype=v.dtype) if i == 0 else v)
             for i, (k, v) in enumerate(tensors.items())}
    save_file(wrong, tmp_path / "shape.safetensors", meta)
    save_file(tensors, tmp_path / "plain.safetensors")  # no metadata: not one of ours
    cases = {"missing": "does not fit this decoder: missing", "shape": "is \\(", "plain": "is not an unclip LoRA file"}
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            unclip.load(tiny_model_dir).load_lora(tmp_path / f"{name}.safetensors")
    pipe = unclip.load(tiny_model_dir).load_lora(lora)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):  # peft would overwrite the first one's weights
        pipe.load_lora(lora)
    with pytest.raises(ValueError, match="finite"):
        unclip.load(tiny_model_dir).load_lora(lora, float("nan"))
    (tmp_path / "ft").mkdir()  # `finetune --lora-rank` writes one file per stage into a directory
    (tmp_path / "ft" / "decoder.safetensors").write_bytes(lora.read_bytes())
    assert unclip.load(tiny_model_dir).load_lora(tmp_path / "ft").decoder.lora_meta["stage"] == "decoder"
    assert main(["generate", "x", "--model", str(tiny_model_dir), "--lora", str(tmp_path / "plain.safetensors"),
                 "--out", str(tmp_path / "g.png")]) == 2


def test_metadata_csv_without_a_text_column_is_a_clear_error(tmp_path):
    import pytest

    src = tmp_path / "c"
    src.mkdir()
    (src / "x.png").write_bytes(_emoji_bytes("1f355.png"))
    (src / "metadata.csv").write_text("file_name,caption\nx.png,pizza\n")
    with pytest.raises(ValueError, match="needs the columns file_name and text"):
        from unclip.data.importer import ImportConfig, import_images

        import_images(ImportConfig(src=src, out=tmp_path / "o"), log=lambda *a: None)
    assert main(["data", "import", str(src), "--out", str(tmp_path / "o")]) == 2


def test_finetune_resumes_only_from_the_base_it_started_from(tiny_model_dir, tmp_path):
    import shutil

    from unclip.finetune import check_base

    base, out = tmp_path / "base", tmp_path / "out"
    shutil.copytree(tiny_model_dir, base)
    check_base(out, base)
    (out / "runs").mkdir()
    check_base(out, base)  # the same weights: resumes
    def flip_a_bit(f):
        f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1]))

    flip_a_bit(next((base / "super_res_first").glob("*.safetensors")))
    check_base(out, base)  # the upsampler is not what the runs started from
    flip_a_bit(next((base / "decoder").glob("*.safetensors")))
    with pytest.raises(ValueError, match="holds a fine-tune of other base weights"):
        check_base(out, base)
    shutil.rmtree(out / "runs")
    check_base(out, base)  # nothing to resume: starts over from the new base


def test_finetune_resumes_only_on_the_images_it_started_on(tmp_path):
    from unclip.finetune import FinetuneConfig, check_data, finetune

    out = tmp_path / "out"
    check_data(out, "import-a")
    (out / "runs").mkdir()
    check_data(out, "import-a")  # the same images: resumes
    with pytest.raises(ValueError, match="the images in SRC changed"):
        check_data(out, "import-b")
    with pytest.raises(ValueError, match="--steps must be at least 4"):
        finetune(FinetuneConfig(src=tmp_path, out=out, steps=3))
