"""Shared fixtures: a real npm-style registry on loopback serving packages packed from tests/fixtures."""

import base64
import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
NPM = FIXTURES / "npm"

# registry package name -> fixture folder (versions are whatever sources.json asks for)
PACKAGES = {
    "emoji-datasource-google": "emoji-datasource-google",
    "@twemoji/svg": "twemoji-svg",
    "fluentui-emoji": "fluentui-emoji",
    "@lobehub/fluent-emoji-3d": "lobehub-fluent-emoji-3d",
    "openmoji": "openmoji",
    "emojibase-data": "emojibase-data",
    "@iconify-json/noto-v1": "iconify-json-noto-v1",
    "@iconify-json/emojione": "iconify-json-emojione",
}


def pack(folder: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """A .tgz of `folder` (which holds `package/`), plus extra members name -> bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=str(p.relative_to(folder)))
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class FakeRegistry:
    """Serves `GET /<name>/<version>` (dist metadata) and `GET /-/<file>.tgz` like the npm registry."""

    def __init__(self):
        self.tarballs = {name: pack(NPM / folder) for name, folder in PACKAGES.items()}
        self.corrupt: set[str] = set()  # packages whose tarball bytes differ from the advertised hash
        self.hits: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                registry.hits.append(self.path)
                path = self.path.lstrip("/")
                if path.startswith("-/"):
                    name = path[2:-4].replace("%40", "@").replace("%2F", "/")
                    data = registry.tarballs.get(name)
                    if data is None:
                        return self._send(404, b"not found")
                    if name in registry.corrupt:
                        data = data[:-10] + b"0" * 10
                    return self._send(200, data)
                name = path.rsplit("/", 1)[0].replace("%40", "@").replace("%2F", "/")
                data = registry.tarballs.get(name)
                if data is None:
                    return self._send(404, b'{"error":"not found"}')
                sri = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
                url = f"{registry.url}/-/{name.replace('/', '%2F')}.tgz"
                self._send(200, json.dumps({"dist": {"tarball": url, "integrity": sri}}).encode())

            def _send(self, code, body):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_member(self, name: str, member: str, data: bytes) -> None:
        self.tarballs[name] = pack(NPM / PACKAGES[name], {member: data})

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """A fake registry, with the unclip cache redirected into tmp_path."""
    reg = FakeRegistry()
    monkeypatch.setenv("UNCLIP_NPM_REGISTRY", reg.url)
    monkeypatch.setenv("UNCLIP_CACHE", str(tmp_path / "cache"))
    yield reg
    reg.close()


FIXTURE_SOURCES = ["noto", "twemoji", "fluent-flat", "fluent-3d", "openmoji-color", "openmoji-black", "noto-v1", "emojione"]


@pytest.fixture(scope="session")
def built_dataset(tmp_path_factory):
    """One dataset built from the fixture packages, shared by the read-only tests."""
    import os

    from unclip.data.build import BuildConfig, build

    root = tmp_path_factory.mktemp("ds")
    reg = FakeRegistry()
    old = {k: os.environ.get(k) for k in ("UNCLIP_NPM_REGISTRY", "UNCLIP_CACHE")}
    os.environ["UNCLIP_NPM_REGISTRY"], os.environ["UNCLIP_CACHE"] = reg.url, str(root / "cache")
    try:
        build(BuildConfig(out=root / "data", sources=FIXTURE_SOURCES, size=64, jobs=1, heldout_concepts=0.25,
                          heldout_images=0.1, shard_size=16), log=lambda *a: None)
    finally:
        reg.close()
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return root / "data"


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny CLIP stage (random image tower, real frozen text tower) saved to disk."""
    import torch

    from unclip.clip import CLIPConfig, LockedTextCLIP
    from unclip.presets import load_preset

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("clip")
    LockedTextCLIP(CLIPConfig(**load_preset("clip", "tiny"))).save(d)
    return d


def overfit(task, steps: int, lr: float = 2e-3, n: int = 4) -> tuple[float, float]:
    """Train task.model on one fixed batch; return (first loss, last loss)."""
    import torch

    from unclip.train import sample_generator

    torch.manual_seed(0)
    batch = task.batch(list(range(n)), [sample_generator(0, 0, i) for i in range(n)], "cpu")
    opt = torch.optim.Adam([p for p in task.model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = task.loss(task.model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses[0], min(losses[-5:])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_clip_dir):
    """A whole tiny unCLIP (random weights): CLIP, prior, decoder, upsampler, AR prior, in one directory."""
    import shutil

    import numpy as np
    import torch

    from unclip.ar_prior import ARPrior, ARPriorConfig
    from unclip.decoder import Decoder, DecoderConfig
    from unclip.presets import load_preset
    from unclip.prior import Prior, PriorConfig
    from unclip.upsampler import Upsampler, UpsamplerConfig

    d = tmp_path_factory.mktemp("model")
    for f in tiny_clip_dir.iterdir():
        shutil.copy(f, d / f.name)
    torch.manual_seed(0)
    prior = Prior(PriorConfig(**load_preset("prior", "tiny")))
    prior.set_stats(np.zeros(384, "float32"), np.full(384, 0.05, "float32"))
    prior.save(d)
    p = load_preset("decoder", "tiny")
    p["block_out_channels"] = tuple(p["block_out_channels"])
    Decoder(DecoderConfig(**p)).save(d)
    p = load_preset("upsampler", "tiny")
    p["block_out_channels"] = tuple(p["block_out_channels"])
    p["sample_size"] = 64  # 16 px decoder output -> 64 px
    Upsampler(UpsamplerConfig(**p)).save(d)
    ar = ARPrior(ARPriorConfig(**load_preset("ar_prior", "tiny")), dims=4)
    z = torch.nn.functional.normalize(torch.randn(64, 384), dim=-1)
    ar.quantizer.fit(z, torch.rand(64))
    ar.save(d)
    return d


def tiny_clip_tokenizer(max_length: int = 16):
    """A CLIPTokenizer over single characters (no hub here): enough to tokenize test prompts."""
    import string

    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase) + [",", "."]
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars])}
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>", model_max_length=max_length)


@pytest.fixture(scope="session")
def karlo_dir(tmp_path_factory):
    """A tiny random UnCLIPPipeline in Karlo's diffusers layout, saved by diffusers itself (as its
    deleted tests/pipelines/unclip/test_unclip.py built one), plus image_encoder/ in a copy."""
    import shutil

    import torch
    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel, UnCLIPPipeline, UnCLIPScheduler
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer(16)
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, projection_dim=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1, num_embeddings=16)
    text_proj = UnCLIPTextProjModel(clip_extra_context_tokens=2, clip_embeddings_dim=32, time_embed_dim=128,
                                    cross_attention_dim=48)
    decoder = UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        cross_attention_dim=48, attention_head_dim=8, resnet_time_scale_shift="scale_shift", class_embed_type="identity")
    sr = dict(sample_size=32, layers_per_block=1, block_out_channels=(32, 64), in_channels=6, out_channels=3,
              down_block_types=("ResnetDownsampleBlock2D",) * 2, up_block_types=("ResnetUpsampleBlock2D",) * 2)
    first, last = UNet2DModel(**sr), UNet2DModel(**sr)
    with torch.no_grad():  # parameters diffusers initialises to constants get random values, so they count
        prior.clip_mean.normal_(0, 0.5)
        prior.clip_std.uniform_(0.5, 1.5)
        prior.prd_embedding.normal_(0, 0.5)
        text_proj.learned_classifier_free_guidance_embeddings.normal_(0, 0.5)
        for m in (decoder, first, last):
            for p in m.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.05)
    pipe = UnCLIPPipeline(
        prior=prior, decoder=decoder, text_encoder=text, tokenizer=tok, text_proj=text_proj, super_res_first=first,
        super_res_last=last,
        prior_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon"))
    d = tmp_path_factory.mktemp("karlo") / "karlo"
    pipe.save_pretrained(d, safe_serialization=True)
    full = d.parent / "karlo-with-image-encoder"
    shutil.copytree(d, full)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, projection_dim=32, intermediate_size=37,
                                                            num_attention_heads=4, num_hidden_layers=2, image_size=32,
                                                            patch_size=4)).eval()
    vision.save_pretrained(full / "image_encoder", safe_serialization=True)
    CLIPImageProcessor(crop_size=32, size=32).save_pretrained(full / "feature_extractor")
    index = json.loads((full / "model_index.json").read_text())
    index.update(image_encoder=["transformers", "CLIPVisionModelWithProjection"],
                 feature_extractor=["transformers", "CLIPImageProcessor"])
    (full / "model_index.json").write_text(json.dumps(index, indent=2))
    return d
