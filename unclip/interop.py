"""The diffusers/Karlo unCLIP format: read it into our pipeline, write our models into it.

Layout (diffusers' `UnCLIPPipeline`, as Karlo's weights are published): `model_index.json`,
`prior/` (PriorTransformer), `decoder/` (UNet2DConditionModel), `text_proj/`,
`super_res_first/` and `super_res_last/` (UNet2DModel), `text_encoder/`
(CLIPTextModelWithProjection), `tokenizer/`, and `prior_scheduler/`, `decoder_scheduler/`,
`super_res_scheduler/` (UnCLIPScheduler). `UnCLIPImageVariationPipeline` directories add
`image_encoder/` + `feature_extractor/` and drop the prior; we read either, and both at once.

Reading follows diffusers' conventions exactly (`DiffusersCLIP`): CLIP embeddings are not
normalised, captions are padded to the tokenizer's maximum length, the text encoder runs without
the attention mask, and the second upsampler takes the last step. With `sampler="ddpm"` and
`best_of=1` our pipeline then draws the same images as diffusers' from the same seed.

Writing (`export_diffusers`) stores our text tower as `MiniLMTextModelWithProjection`, a
transformers `PreTrainedModel` defined here (the locked MiniLM + our projection, returning
`text_embeds` and `last_hidden_state` like CLIP's), so diffusers loads it once this module is
imported: `import unclip.interop; UnCLIPPipeline.from_pretrained(OUT)`.
"""

import copy
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase  # noqa: F401  (diffusers looks them up here)

from unclip.clip import TextEncoding

# diffusers 0.42 saves text_proj as ["diffusers", "UnCLIPTextProjModel"], which it cannot resolve when
# loading (the class moved to pipelines/deprecated and left the top level); the module path resolves.
TEXT_PROJ_MODULE = "diffusers.pipelines.deprecated.unclip.text_proj"
SUBFOLDERS = ("prior", "decoder", "text_proj", "super_res_first", "super_res_last", "text_encoder", "tokenizer")


def is_diffusers_dir(path: Path) -> bool:
    return (Path(path) / "model_index.json").exists()


class DiffusersCLIP(nn.Module):
    """CLIP of a diffusers unCLIP directory behind our CLIP interface, with diffusers' conventions."""

    def __init__(self, text_encoder, tokenizer, image_encoder=None, image_mean=None, image_std=None):
        super().__init__()
        self.text_encoder, self.tokenizer, self.image_encoder = text_encoder.eval(), tokenizer, image_encoder
        mean = image_mean or (0.48145466, 0.4578275, 0.40821073)
        std = image_std or (0.26862954, 0.26130258, 0.27577711)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        return self.text_encoder.config.projection_dim

    @property
    def context_length(self) -> int:
        return self.tokenizer.model_max_length

    @property
    def image_size(self) -> int:
        return self.image_encoder.config.image_size if self.image_encoder is not None else 224

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> TextEncoding:
        tok = self.tokenizer(list(captions), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        out = self.text_encoder(tok.input_ids)  # no attention mask, as UnCLIPPipeline._encode_prompt
        return TextEncoding(out.text_embeds, out.last_hidden_state, tok.attention_mask.bool())

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [-1, 1] -> image_embeds (B, D), not normalised (UnCLIPImageVariationPipeline)."""
        if self.image_encoder is None:
            raise ValueError("this diffusers model has no image_encoder/ (an UnCLIPPipeline directory): variations, "
                             "inversion and edits need one, as UnCLIPImageVariationPipeline directories have")
        s = self.image_size
        x = F.interpolate((images + 1) / 2, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
        return self.image_encoder((x - self.mean) / self.std).image_embeds


def load_diffusers(path: Path):
    """A diffusers unCLIP directory -> our UnCLIPPipeline (every capability; variations and edits
    need image_encoder/)."""
    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import AutoTokenizer, CLIPVisionModelWithProjection

    from unclip.decoder import Decoder
    from unclip.pipeline import UnCLIPPipeline
    from unclip.prior import Prior
    from unclip.upsampler import Upsampler
    from unclip.weights import load_diffusers_module, refuse_pickles

    path = Path(path)
    index = json.loads((path / "model_index.json").read_text())
    present = {k for k, v in index.items() if not k.startswith("_") and v and v[0] is not None}
    missing = [k for k in ("decoder", "text_proj", "text_encoder", "tokenizer") if k not in present]
    if missing:
        raise FileNotFoundError(f"{path} is not an unCLIP diffusers directory: model_index.json lacks {', '.join(missing)}")
    for sub in present & set(SUBFOLDERS + ("image_encoder",)):
        refuse_pickles(path / sub)

    def load(cls, name):
        return load_diffusers_module(cls, path / name)

    _check_schedulers(path, present)
    text_encoder = _load_text_encoder(path, index)
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    image_encoder, mean, std = None, None, None
    if "image_encoder" in present:
        image_encoder = load(CLIPVisionModelWithProjection, "image_encoder")
        fe = path / "feature_extractor" / "preprocessor_config.json"
        if fe.exists():
            cfg = json.loads(fe.read_text())
            mean, std = cfg.get("image_mean"), cfg.get("image_std")
    clip = DiffusersCLIP(text_encoder, tokenizer, image_encoder, mean, std)
    parts = {"clip": clip, "decoder": Decoder.wrap(load(UNet2DConditionModel, "decoder"), load(UnCLIPTextProjModel, "text_proj"))}
    if "prior" in present:
        parts["prior"] = Prior.wrap(load(PriorTransformer, "prior"))
    if "super_res_first" in present:
        first = load(UNet2DModel, "super_res_first")
        last = load(UNet2DModel, "super_res_last") if "super_res_last" in present else None
        low, high = parts["decoder"].config.sample_size, first.config.sample_size
        if high % low or high <= low:
            raise ValueError(f"{path}: super_res_first renders {high} px, not a multiple of the decoder's {low} px")
        parts["upsampler"] = Upsampler.wrap(first, last, factor=high // low)
    return UnCLIPPipeline(**parts, name=path.name)


# What our samplers assume of each stage (Karlo's schedulers): the training schedule and the output's meaning.
SCHEDULER_DEFAULTS = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon",
                      "clip_sample": True, "clip_sample_range": 1.0}  # UnCLIPScheduler's own, for keys a config omits
SCHEDULER_EXPECTS = {
    "prior_scheduler": {"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 5.0},
    "decoder_scheduler": {"prediction_type": "epsilon"},
    "super_res_scheduler": {"prediction_type": "epsilon"},
}


def _check_schedulers(path: Path, present: set) -> None:
    """Each scheduler folder's config must describe the schedule our samplers run (UnCLIPScheduler's
    squaredcos_cap_v2 over 1000 steps, each stage's prediction type and clipping): a directory that trained
    its stages otherwise would sample wrongly without a word, so it is refused naming the setting."""
    for name, expects in SCHEDULER_EXPECTS.items():
        f = path / name / "scheduler_config.json"
        if name not in present or not f.exists():
            continue  # absent: nothing says otherwise (we run Karlo's schedule)
        cfg = {**SCHEDULER_DEFAULTS, **json.loads(f.read_text())}
        want = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", **expects}
        bad = [f"{k} {cfg[k]!r} (supported: {v!r})" for k, v in want.items() if cfg[k] != v]
        if bad:
            raise ValueError(f"{f}: {'; '.join(bad)}; unclip samples this stage only as Karlo's schedulers do")


def _load_text_encoder(path: Path, index: dict):
    from transformers import CLIPTextModelWithProjection

    library, cls_name = index["text_encoder"]
    cls = MiniLMTextModelWithProjection if cls_name == MiniLMTextModelWithProjection.__name__ else CLIPTextModelWithProjection
    if cls is CLIPTextModelWithProjection and cls_name != "CLIPTextModelWithProjection":
        raise ValueError(f"{path}/text_encoder is a {library}.{cls_name}; unCLIP needs CLIPTextModelWithProjection")
    from unclip.weights import load_diffusers_module

    return load_diffusers_module(cls, path / "text_encoder")


# -- writing ----------------------------------------------------------------------------------
class MiniLMTextConfig(PretrainedConfig):
    model_type = "unclip_minilm_text"

    def __init__(self, bert: dict | None = None, projection_dim: int = 384, **kwargs):
        super().__init__(**kwargs)
        self.bert = bert or {}
        self.projection_dim = projection_dim


class MiniLMTextModelWithProjection(PreTrainedModel):
    """Our text tower (locked MiniLM, mean pooling, projection, unit norm) with CLIP's outputs."""

    config_class = MiniLMTextConfig
    base_model_prefix = "text"

    def __init__(self, config: MiniLMTextConfig):
        super().__init__(config)
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(**config.bert), add_pooling_layer=False)
        self.text_projection = nn.Linear(self.bert.config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        from transformers.models.clip.modeling_clip import CLIPTextModelOutput

        if attention_mask is None:  # diffusers passes none: padding is the tokenizer's pad id
            attention_mask = (input_ids != self.bert.config.pad_token_id).long()
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, W)
        m = attention_mask[..., None].to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)  # mean pooling, as the tower was trained
        return CLIPTextModelOutput(text_embeds=F.normalize(self.text_projection(pooled), dim=-1), last_hidden_state=hidden)


def export_diffusers(pipe, out: Path) -> Path:
    """Write an UnCLIPPipeline (ours, with our LockedTextCLIP) in diffusers' layout."""
    from diffusers import UnCLIPScheduler

    from unclip.clip import LockedTextCLIP
    from unclip.weights import save_diffusers

    if not isinstance(pipe.clip, LockedTextCLIP):
        raise ValueError("export writes models with our CLIP stage; a model read from diffusers is already in that format")
    if pipe.prior is None or pipe.decoder is None:
        raise ValueError("diffusers' UnCLIPPipeline needs a prior and a decoder; this model lacks "
                         + " and ".join(n for n in ("prior", "decoder") if getattr(pipe, n) is None))
    if pipe.upsampler is None:
        raise ValueError("diffusers' UnCLIPPipeline needs an upsampler (super_res_first/last); this model has none")
    if getattr(pipe.decoder, "expert", None) is not None:
        raise ValueError(f"the decoder hands t >= {pipe.decoder.config.expert_from} to a high-noise expert, which diffusers' "
                         "UnCLIPPipeline has no place for: export `pipe.with_decoder(pipe.decoder.base())`, the decoder "
                         "without it (its other steps' weights)")
    if pipe.decoder.config.v_ramp is not None:
        raise ValueError(f"the decoder predicts v above t = {pipe.decoder.config.v_ramp[0]} (its config's v_ramp); diffusers' "
                         "UnCLIPPipeline reads its decoder as an ε model at every step: this decoder has no equivalent there")
    adapted = [n for n in ("prior", "decoder", "upsampler") if getattr(pipe, n) is not None
               and any("lora_" in k or ".base_layer." in k for k in getattr(pipe, n).state_dict())]
    if adapted:
        raise ValueError(f"the {', '.join(adapted)} has LoRA adapters loaded, which diffusers' layout has no place for "
                         "(their weights would be left out, and diffusers would fill them at random): export the "
                         "base model, or a merged fine-tune (`unclip finetune` without --lora-rank)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tower = pipe.clip.text_tower
    cfg = MiniLMTextConfig(bert=tower.model.config.to_dict(), projection_dim=pipe.clip.embed_dim)
    text = MiniLMTextModelWithProjection(cfg)
    text.bert.load_state_dict({k: v for k, v in tower.model.state_dict().items() if not k.startswith("pooler.")})
    text.text_projection.load_state_dict(pipe.clip.text_proj.state_dict())
    text.save_pretrained(out / "text_encoder", safe_serialization=True)
    tok = copy.deepcopy(tower.tokenizer)  # the live pipeline's tokenizer keeps its own length
    tok.model_max_length = pipe.prior.config.num_embeddings  # diffusers pads every caption to this
    tok.save_pretrained(out / "tokenizer")
    save_diffusers(pipe.prior.transformer, out / "prior", half=False)
    save_diffusers(pipe.decoder.unet, out / "decoder", half=False)
    save_diffusers(pipe.decoder.text_proj, out / "text_proj", half=False)
    save_diffusers(pipe.upsampler.unet, out / "super_res_first", half=False)
    save_diffusers(pipe.upsampler.last_unet or pipe.upsampler.unet, out / "super_res_last", half=False)
    size = pipe.decoder.config.sample_size * pipe.upsampler.config.factor  # diffusers renders the UNets' sample_size
    for name in ("super_res_first", "super_res_last"):  # (ours was trained on crops: its config may name their size)
        f = out / name / "config.json"
        f.write_text(json.dumps({**json.loads(f.read_text()), "sample_size": size}, indent=2))
    schedulers = {"prior_scheduler": UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                                     clip_sample=True, clip_sample_range=5.0),
                  "decoder_scheduler": UnCLIPScheduler(variance_type="learned_range" if pipe.decoder.config.learned_variance
                                                       else "fixed_small_log", prediction_type="epsilon"),
                  "super_res_scheduler": UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon")}
    for name, s in schedulers.items():
        s.save_pretrained(out / name)
    index = {"_class_name": "UnCLIPPipeline", "_diffusers_version": _diffusers_version(),
             "prior": ["diffusers", "PriorTransformer"], "decoder": ["diffusers", "UNet2DConditionModel"],
             "text_proj": [TEXT_PROJ_MODULE, "UnCLIPTextProjModel"], "super_res_first": ["diffusers", "UNet2DModel"],
             "super_res_last": ["diffusers", "UNet2DModel"],
             "text_encoder": ["unclip.interop", MiniLMTextModelWithProjection.__name__],
             "tokenizer": ["transformers", type(tok).__name__],
             **{name: ["diffusers", "UnCLIPScheduler"] for name in schedulers}}
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def diffusers_pipeline(path: Path):
    """diffusers' own `UnCLIPPipeline` for a directory, each component loaded from its folder and
    passed in: works around its text_proj quirk (a directory it saved itself does not load back
    through `from_pretrained`). For comparisons: tests and benchmarks."""
    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel, UnCLIPPipeline, UnCLIPScheduler
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import AutoTokenizer

    path = Path(path)
    index = json.loads((path / "model_index.json").read_text())
    kw = {"use_safetensors": True}
    pipe = UnCLIPPipeline(
        prior=PriorTransformer.from_pretrained(path / "prior", **kw), decoder=UNet2DConditionModel.from_pretrained(path / "decoder", **kw),
        text_proj=UnCLIPTextProjModel.from_pretrained(path / "text_proj", **kw), text_encoder=_load_text_encoder(path, index),
        tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer"),
        super_res_first=UNet2DModel.from_pretrained(path / "super_res_first", **kw),
        super_res_last=UNet2DModel.from_pretrained(path / "super_res_last", **kw),
        **{name: UnCLIPScheduler.from_pretrained(path / name) for name in
           ("prior_scheduler", "decoder_scheduler", "super_res_scheduler")})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
