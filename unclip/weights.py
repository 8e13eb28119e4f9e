"""Weights on disk: safetensors only, never pickle; clear errors for anything else."""

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from unclip.fsutil import atomic_path

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


def _pickle_error(path: Path) -> ValueError:
    return ValueError(
        f"{path} is a pickle-based checkpoint, which can run arbitrary code when loaded; unclip reads only "
        "safetensors. Convert it once, in a trusted environment, by loading it with torch (weights_only=True) "
        "and writing the state dict with safetensors.torch.save_file"
    )


def refuse_pickles(directory: Path) -> None:
    """A model folder whose weights exist only as pickles (.bin, .ckpt, ...) is refused, saying how to convert."""
    directory = Path(directory)
    if not directory.is_dir() or any(directory.glob("*.safetensors")):
        return
    pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise _pickle_error(pickles[0])


def load_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise _pickle_error(path)
    if not path.exists():
        raise FileNotFoundError(f"missing weights file {path}")
    return load_file(path, device=device)


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Atomic write: the file appears complete under its name or not at all."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_diffusers(module, directory: Path, half: bool = True) -> None:
    """`save_pretrained` (config.json + safetensors) of a copy in fp16; the live module is untouched."""
    import copy

    out = copy.deepcopy(module)
    (out.half() if half else out.float()).save_pretrained(Path(directory), safe_serialization=True)


def check_same_config(loaded, built, folder: Path, ignore=()) -> None:
    """A module read from `folder` (its config.json) must be the one our config builds: equal shapes can
    hide other settings (heads x head size, activations), which loading the weights would not notice."""
    def plain(module):
        c = {k: v for k, v in dict(module.config).items() if not k.startswith("_") and k not in ignore}
        return json.loads(json.dumps(c, default=list))

    a, b = plain(loaded), plain(built)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        raise ValueError(f"{folder}/config.json does not describe the model its *_config.json builds: "
                         + "; ".join(f"{k} {a.get(k)!r} there, {b.get(k)!r} here" for k in diff[:5]))


def load_diffusers_module(cls, folder: Path):
    """`cls.from_pretrained(folder)` (a diffusers or transformers model), safetensors only, and every
    tensor accounted for: diffusers fills missing tensors with random values and only warns, so the
    file's names and shapes are checked against the model's, and a difference is an error naming them."""
    from safetensors import safe_open

    folder = Path(folder)
    refuse_pickles(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    try:
        model = cls.from_pretrained(folder, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as e:  # the whole message: transformers names the tensors after line 1
        msg = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{folder}: {msg[:800]}{' ...' if len(msg) > 800 else ''}") from None
    stored = {}
    for f in files:
        with safe_open(str(f), "pt") as fh:
            stored.update({k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()})
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(stored))
    shapes = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
    ignored = [re.compile(p) for p in (getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or [])]
    extra = sorted(k for k in set(stored) - set(expected)  # e.g. layers the config does not describe
                   if not k.endswith("position_ids") and not any(p.search(k) for p in ignored))
    if missing or shapes or extra:
        what = [f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"] if missing else []
        what += [f"shape of {k}: {stored[k]} in the file, {expected[k]} in the model" for k in shapes[:5]]
        what += [f"not in the model: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}"] if extra else []
        raise ValueError(f"{folder} does not match its config: " + "; ".join(what))
    return model.float().eval()
