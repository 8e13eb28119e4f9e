"""What the commands share: loading the model, opening images, saving grids with their parameters."""

from pathlib import Path


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise ValueError("the prompt is empty; give a description such as \"a grinning cat, 3D style\"")


def png_path(text: str) -> Path:
    """--out of an image command: a .png path (checked before any work; the grid is a PNG with its parameters)."""
    import argparse

    p = Path(text)
    if p.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"must end in .png (the grid is written as a PNG with its parameters), got {text!r}")
    return p


def number_list(kind):
    """A comma-separated list of finite numbers (--thetas, --ks), checked at parse time."""
    import argparse
    import math

    def parse(text: str):
        try:
            values = [kind(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"comma-separated {kind.__name__}s, got {text!r}") from None
        if not values or not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"comma-separated finite {kind.__name__}s, got {text!r}")
        return values
    parse.__name__ = f"{kind.__name__} list"
    return parse


def apply_loras(pipe, values) -> list[str]:
    from unclip.lora import parse_lora_arg

    out = []
    for v in values or []:
        path, scale = parse_lora_arg(v)
        pipe.load_lora(path, scale)
        out.append(f"{path}:{scale}")
    return out


def open_image(path: Path):
    from unclip.data.render import CorruptImage, open_raster

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image at {path}")
    try:
        return open_raster(path.read_bytes())  # camera orientation and 16-bit greys handled there
    except CorruptImage as e:
        raise ValueError(f"{path}: {e}") from None


def image_or_prompt(value: str):
    p = Path(value)
    suffixes = (".png", ".jpg", ".jpeg", ".jfif", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif")
    try:
        exists = p.is_file()
    except OSError:  # a long prompt is no file name ("File name too long")
        exists = False
    return open_image(p) if p.suffix.lower() in suffixes or exists else value


def model_dir(a) -> Path:
    """--model, else the shipped model."""
    from unclip.models import default_model_dir

    model = a.model or default_model_dir()
    if model is None:
        raise FileNotFoundError("no shipped model in this installation; pass --model DIR")
    return model


def load_pipe(a, inverted: bool = False):
    import torch

    from unclip.pipeline import UnCLIPPipeline

    model = model_dir(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = UnCLIPPipeline.from_pretrained(model).set_precision(getattr(a, "precision", "fp32"))
    if getattr(a, "decoder_guidance_interval", None) is not None:
        pipe.decoder.config.guidance_interval = a.decoder_guidance_interval
    if hasattr(a, "decoder_guidance") and a.decoder_guidance is None:
        a.decoder_guidance = pipe.default_decoder_guidance(inverted=inverted)  # the value used is the value recorded
    return pipe, model


def common_params(a, model, **extra) -> dict:
    from unclip.models import model_hash

    return {"seed": a.seed, "decoder_steps": a.decoder_steps, "decoder_guidance_scale": a.decoder_guidance,
            "precision": a.precision, "model": str(model), "model_hash": model_hash(model), **extra}


def guidance_interval(text: str) -> tuple[int, int]:
    """--decoder-guidance-interval LO,HI: two training timesteps (checked as the decoder config's)."""
    import argparse

    from unclip.sampling import check_guidance_interval

    try:
        lo, hi = (int(v) for v in text.split(","))
        check_guidance_interval((lo, hi))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two timesteps LO,HI with 0 <= LO <= HI <= 999, got {text!r}") from None
    return lo, hi


def add_guidance_interval(parser) -> None:
    parser.add_argument("--decoder-guidance-interval", type=guidance_interval, metavar="LO,HI",
                        help="guide the decoder only at timesteps LO..HI, unguided elsewhere (default: the model's "
                             "own, its decoder config; else every step)")


def add_precision(parser) -> None:
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="autocast for the denoisers: bf16 ~0.56x the time on a CPU with AMX, images within ~1%% "
                             "(default: fp32; fp16 is for GPUs)")


def save_grid(images, a, params, cols=None) -> None:
    from unclip.images import grid, save_png

    save_png(grid(images, cols), a.out, params)
    print(f"wrote {a.out} ({len(images)} images)")


def find_judge(given: Path | None) -> Path:
    from unclip.models import JUDGE
    from unclip.paths import runs_dir

    d = Path(given) if given else JUDGE if (JUDGE / "clip.safetensors").exists() else runs_dir() / "judge" / "model"
    if not (d / "clip.safetensors").exists():
        raise FileNotFoundError(f"no judge at {d}: train one with `unclip train clip --preset judge --seed 1 "
                                "--option subset=0.9 --out ~/.cache/unclip/runs/judge` or pass --judge DIR")
    return d
