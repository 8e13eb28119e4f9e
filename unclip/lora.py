"""LoRA adapters (peft) for the decoder and the prior: fine-tune a few MB, keep the base model.

Training: `unclip train decoder --init-from MODEL --lora-rank 8` wraps the stage's task in
`LoRATask`: the base weights come from MODEL, low-rank adapters are injected (peft) into the
attention projections (and, for the decoder, the ResNet convolutions and the z_i projections),
everything else is frozen, and the run's export is one `lora.safetensors` (adapter tensors plus
their config in the metadata). Generation: `unclip generate ... --lora FILE[:SCALE]`, or
`pipe.load_lora(FILE, scale)`; SCALE multiplies the adapter's update (0 = the base model).
A decoder's high-noise expert (MODEL/decoder_expert, Decoder.expert) is a network of its own: a run
from `--init-from MODEL/decoder_expert` writes an adapter for the stage "decoder_expert", which goes
into the expert; a "decoder" adapter goes into the decoder's own layers only.
"""

import json
from contextlib import contextmanager
from pathlib import Path

import torch

FILE = "lora.safetensors"
TARGETS = {
    "decoder": ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj", "conv1", "conv2",
                "embedding_proj", "clip_image_embeddings_project_to_time_embeddings", "clip_extra_context_tokens_proj"],
    "prior": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "embedding_proj"],
}
EXPERT = "decoder_expert"  # the stage name of an adapter for a decoder's high-noise expert (same targets)


def add_lora(model: torch.nn.Module, stage: str, rank: int, alpha: float | None = None) -> torch.nn.Module:
    """Inject adapters into `model` (a Decoder or Prior) in place and freeze all but them."""
    from peft import LoraConfig, inject_adapter_in_model

    if stage not in TARGETS and stage != EXPERT:
        raise ValueError(f"LoRA is for the {' and the '.join(TARGETS)}, not {stage!r}")
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    targets = TARGETS["decoder" if stage == EXPERT else stage]  # peft matches them as module-name suffixes
    cfg = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets, lora_dropout=0.0, init_lora_weights=True)
    inject_adapter_in_model(cfg, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    model.lora_meta = {"stage": stage, "rank": rank, "alpha": alpha or rank, "targets": targets}
    return model


def lora_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items() if "lora_" in k}


def save_lora(model: torch.nn.Module, path: Path, dtype=torch.float16) -> Path:
    from unclip.weights import save_safetensors

    save_safetensors({k: v.to(dtype) for k, v in lora_tensors(model).items()}, path,
                     {"unclip_lora": json.dumps(model.lora_meta)})
    return Path(path)


def load_lora(pipe, path: Path, scale: float = 1.0) -> None:
    """Inject the adapter in `path` into its stage of `pipe`, with its update scaled by `scale`."""
    from safetensors import safe_open

    from unclip.weights import load_safetensors, refuse_pickles

    import math

    path = Path(path)
    if not math.isfinite(scale):
        raise ValueError(f"LoRA scale must be a finite number, got {scale}")
    if path.is_dir():
        refuse_pickles(path)
        if not (path / FILE).exists():  # `unclip finetune --lora-rank` writes one file per stage: load each
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no LoRA adapters (*.safetensors) in {path}")
            for f in files:
                load_lora(pipe, f, scale)
            return
        path = path / FILE
    tensors = load_safetensors(path)  # refuses pickles, names a missing file
    with safe_open(str(path), "pt") as f:
        meta = (f.metadata() or {}).get("unclip_lora")
    if meta is None:
        raise ValueError(f"{path} is not an unclip LoRA file (no unclip_lora metadata)")
    meta = json.loads(meta)
    if meta["stage"] == EXPERT:
        module = getattr(getattr(pipe, "decoder", None), "expert", None)
        if module is None:
            raise ValueError(f"{path} adapts a decoder's high-noise expert (decoder_expert), which this model does not have")
    else:
        module = getattr(pipe, meta["stage"], None)
        if module is None:
            raise ValueError(f"{path} adapts the {meta['stage']}, which this model does not have")
    with own_layers(module):
        if getattr(module, "lora_meta", None) is not None:  # a second adapter would replace the first one's weights
            raise ValueError(f"{path}: the {meta['stage']} already has a LoRA adapter; one per stage (merge them by "
                             "fine-tuning on both sets of images)")
        add_lora(module, meta["stage"], meta["rank"], meta["alpha"])
        expected = set(lora_tensors(module))
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            raise ValueError(f"{path} does not fit this {meta['stage']}: "
                             + "; ".join(x for x in (f"missing {', '.join(missing[:3])}" if missing else "",
                                                     f"unexpected {', '.join(unexpected[:3])}" if unexpected else "") if x))
        sd = module.state_dict()
        for k, v in tensors.items():
            if sd[k].shape != v.shape:
                raise ValueError(f"{path}: {k} is {tuple(v.shape)}, the model needs {tuple(sd[k].shape)}")
            sd[k].copy_(v.float() * (scale if "lora_B" in k else 1.0))  # ΔW = B·A·α/r: scaling B scales ΔW
    module.eval().requires_grad_(False)


@contextmanager
def own_layers(module: torch.nn.Module):
    """`module` without its high-noise expert (Decoder.expert, a submodule) while the block runs: a decoder's
    adapter is injected into, and read from, its own layers; the expert takes its own ("decoder_expert")."""
    expert = getattr(module, "expert", None)
    if expert is not None:
        module.expert = None
    try:
        yield module
    finally:
        if expert is not None:
            module.expert = expert


def parse_lora_arg(value: str) -> tuple[Path, float]:
    """"FILE" or "FILE:SCALE" (the CLI's --lora)."""
    head, sep, tail = value.rpartition(":")
    if sep and head:
        try:
            return Path(head), float(tail)
        except ValueError:
            pass
    return Path(value), 1.0


class LoRATask:
    """A stage's task with adapters: base weights from `init_from`, only the adapters trained."""

    def __init__(self, base, stage: str, init_from: Path | None, rank: int, alpha: float | None = None):
        if init_from is None:
            raise ValueError("a LoRA run adapts an existing model: give --init-from MODEL_DIR")
        if stage == "decoder" and Path(init_from).name == EXPERT:  # MODEL/decoder_expert: the expert's adapter
            stage = EXPERT
        self.base, self.stage, self.rank, self.alpha = base, stage, rank, alpha
        base.load_weights(Path(init_from))
        self.model = add_lora(base.model, stage, rank, alpha)

    def __getattr__(self, name):  # everything else (batch, loss, held-out loss, preview, ...) is the stage's
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base)

    def load_weights(self, directory: Path) -> None:
        """The base weights were loaded before the adapters went in (see __init__)."""

    def eval_model(self):
        return add_lora(self.base.eval_model(), self.stage, self.rank, self.alpha)

    def export(self, model, directory: Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        save_lora(model, Path(directory) / FILE)
