"""Interop with diffusers' unCLIP format (Karlo's layout), on tiny random components built here."""

import json
import shutil

import numpy as np
import pytest
import torch

import unclip


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _diffusers(path):
    """diffusers' pipeline as a user loads it; text_proj passed in for directories diffusers saved itself."""
    import unclip.interop  # noqa: F401  (our exported text encoder class lives there)
    from diffusers import UnCLIPPipeline

    from unclip.interop import diffusers_pipeline

    index = json.loads((path / "model_index.json").read_text())
    if index["text_proj"][0] == "diffusers":  # its own save/load quirk (see unclip.interop.TEXT_PROJ_MODULE)
        return diffusers_pipeline(path)
    pipe = UnCLIPPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


STEPS = dict(prior_num_inference_steps=3, decoder_num_inference_steps=3, super_res_num_inference_steps=2)
OURS = dict(prior_steps=3, decoder_steps=3, upsampler_steps=2, sampler="ddpm", best_of=1, upsampler_strength=1.0)


def test_a_karlo_layout_directory_draws_what_diffusers_draws(karlo_dir):
    ref = _diffusers(karlo_dir)(["a cat", "red heart"], num_images_per_prompt=2, generator=_gen(), output_type="np",
                                **STEPS).images
    ours = unclip.load(karlo_dir).memory_format(torch.contiguous_format)(["a cat", "red heart"], 2, generator=_gen(),
                                                                         output_type="np", **OURS).images
    assert ours.shape == ref.shape == (4, 32, 32, 3)
    diff = float(np.abs(ours - ref).max())
    print(f"max |ours - diffusers| on a Karlo-layout pipeline: {diff:.2e}")
    assert diff < 1e-4
    assert float(np.abs(ref[0] - ref[2]).max()) > 1e-2  # the images differ by prompt: the comparison is not vacuous


def test_our_export_loads_in_diffusers_and_draws_the_same_images(tiny_model_dir, tmp_path):
    from unclip.interop import export_diffusers

    pipe = unclip.load(tiny_model_dir).memory_format(torch.contiguous_format)
    out = export_diffusers(pipe, tmp_path / "export")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "UnCLIPPipeline" and index["text_encoder"][1] == "MiniLMTextModelWithProjection"
    assert not list(out.rglob("*.bin"))
    ref = _diffusers(out)("a grinning cat", num_images_per_prompt=2, generator=_gen(), output_type="np", **STEPS).images
    ours = pipe("a grinning cat", 2, generator=_gen(), output_type="np", **OURS).images
    diff = float(np.abs(ours - ref).max())
    print(f"max |ours - diffusers| on our exported model: {diff:.2e}")
    assert diff < 1e-4
    back = unclip.load(out).memory_format(torch.contiguous_format)("a grinning cat", 2, generator=_gen(), output_type="np",
                                                                   **OURS).images  # and read it back
    assert float(np.abs(back - ours).max()) < 1e-4


def test_every_capability_runs_on_a_karlo_layout_with_an_image_encoder(karlo_dir):
    from PIL import Image

    pipe = unclip.load(karlo_dir.parent / "karlo-with-image-encoder")
    image = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8))
    z = pipe.encode_image(image)
    assert z.shape == (1, 32)
    kw = dict(decoder_steps=3, upsample=False, output_type="pt")
    assert pipe.variations(image, 2, **kw).images.shape == (2, 3, 16, 16)
    z_i, x_T = pipe.invert(image, steps=3)
    assert x_T.shape == (1, 3, 16, 16)
    assert pipe.interpolate(image, image, 3, **kw).images.shape == (3, 3, 16, 16)
    assert pipe.text_diff(image, "a cat", "a dog", (0.0, 0.5), **kw).images.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="no image_encoder"):
        unclip.load(karlo_dir).encode_image(image)


def test_pickles_and_broken_tensors_are_refused_with_their_names(karlo_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "k"
    shutil.copytree(karlo_dir, d)
    weights = next((d / "decoder").glob("*.safetensors"))
    sd = load_file(weights)
    dropped = sorted(sd)[0]
    save_file({k: v for k, v in sd.items() if k != dropped}, weights)
    with pytest.raises(ValueError, match="does not match its config: missing " + dropped.replace(".", r"\.")):
        unclip.load(d)
    weights.unlink()
    (d / "decoder" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickle-based checkpoint.*safetensors.torch.save_file"):
        unclip.load(d)


def test_schedulers_other_than_ours_are_refused_with_the_setting(karlo_dir, tmp_path):
    d = tmp_path / "k"
    shutil.copytree(karlo_dir, d)
    f = d / "prior_scheduler" / "scheduler_config.json"
    cfg = json.loads(f.read_text())
    f.write_text(json.dumps({**cfg, "prediction_type": "epsilon"}))
    with pytest.raises(ValueError, match="prior_scheduler.*prediction_type 'epsilon' \\(supported: 'sample'\\)"):
        unclip.load(d)
    f.write_text(json.dumps({**cfg, "num_train_timesteps": 500}))
    with pytest.raises(ValueError, match="num_train_timesteps 500 \\(supported: 1000\\)"):
        unclip.load(d)
    f.unlink()  # no config: nothing says otherwise
    shutil.rmtree(d / "prior_scheduler")
    assert unclip.load(d).prior is not None


def test_export_refuses_what_diffusers_cannot_hold(tiny_model_dir, tmp_path):
    from unclip.interop import export_diffusers

    pipe = unclip.load(tiny_model_dir)
    pipe.upsampler = None
    with pytest.raises(ValueError, match="needs an upsampler"):
        export_diffusers(pipe, tmp_path / "x")
    from unclip.lora import add_lora

    pipe = unclip.load(tiny_model_dir)
    add_lora(pipe.decoder, "decoder", rank=2)
    with pytest.raises(ValueError, match="decoder has LoRA adapters loaded"):
        export_diffusers(pipe, tmp_path / "x")
    pipe = unclip.load(tiny_model_dir)
    import copy
    pipe.decoder.expert, pipe.decoder.config.expert_from = copy.deepcopy(pipe.decoder), 900  # any decoder will do
    with pytest.raises(ValueError, match="high-noise expert"):
        export_diffusers(pipe, tmp_path / "x")
    export_diffusers(pipe.with_decoder(pipe.decoder.base()), tmp_path / "y")  # what bench and report compare
    pipe = unclip.load(tiny_model_dir)
    pipe.decoder.config.v_ramp = (700, 900)
    with pytest.raises(ValueError, match="predicts v above t = 700"):
        export_diffusers(pipe, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_export_leaves_the_pipeline_as_it_was_and_names_the_output_size(tiny_model_dir, tmp_path):
    from unclip.interop import export_diffusers

    pipe = unclip.load(tiny_model_dir)
    length = pipe.clip.text_tower.tokenizer.model_max_length
    out = export_diffusers(pipe, tmp_path / "e")
    assert pipe.clip.text_tower.tokenizer.model_max_length == length  # the export's copy was cut, not ours
    size = pipe.decoder.config.sample_size * pipe.upsampler.config.factor
    for name in ("super_res_first", "super_res_last"):
        assert json.loads((out / name / "config.json").read_text())["sample_size"] == size
    f = out / "super_res_first" / "config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "sample_size": pipe.decoder.config.sample_size * 3 // 2}))
    with pytest.raises(ValueError, match="not a multiple of the decoder's"):
        unclip.load(out)


def test_export_and_generate_from_the_cli(tiny_model_dir, karlo_dir, tmp_path):
    from PIL import Image

    from unclip.cli import main

    assert main(["export", "diffusers", str(tmp_path / "e"), "--model", str(tiny_model_dir)]) == 0
    assert (tmp_path / "e" / "model_index.json").exists()
    assert main(["generate", "a cat", "--model", str(karlo_dir), "--num-images", "1", "--prior-steps", "2",
                 "--decoder-steps", "2", "--upsampler-steps", "2", "--out", str(tmp_path / "k.png")]) == 0
    assert Image.open(tmp_path / "k.png").size == (32, 32)
