"""Where models live: the shipped default and user directories."""

from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "shipped" / "emoji"  # package data, so a wheel carries it
JUDGE = SHIPPED.parent / "judge"  # the evaluation-only judge (unclip eval / report)


def default_model_dir() -> Path | None:
    """The model shipped in the repository, when this checkout has it."""
    return SHIPPED if SHIPPED.is_dir() else None


STAGE_FILES = {
    "clip": ["clip.safetensors", "clip_config.json"],
    "prior": ["prior", "prior_config.json"],
    "decoder": ["decoder", "text_proj", "decoder_config.json"],
    "upsampler": ["super_res_first", "super_res_first_config.json"],
    "ar_prior": ["ar_prior.safetensors", "ar_prior_config.json"],
}


def assemble(out: Path, **stage_dirs: Path | None) -> Path:
    """Copy each stage's exported weights (a training run's `model/` dir) into one model directory."""
    import shutil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stage, src in stage_dirs.items():
        if src is None:
            continue
        if stage not in STAGE_FILES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_FILES)}")
        src = Path(src).expanduser()
        missing = [f for f in STAGE_FILES[stage] if not (src / f).exists()]
        if missing:
            raise FileNotFoundError(f"{src} is not a {stage} export: missing {', '.join(missing)}")
        for f in STAGE_FILES[stage]:
            s, d = src / f, out / f
            if s.is_dir():
                shutil.rmtree(d, ignore_errors=True)
                shutil.copytree(s, d)
            else:
                shutil.copy2(s, d)
    return out


def model_hash(path: Path) -> str:
    """A short hash of every weights file in a model directory (recorded in generated PNGs)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*.safetensors")):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 16))  # head and size: fast, and changes whenever the weights do
    return h.hexdigest()[:12]
