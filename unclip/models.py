"""Where models live: the shipped default and user directories."""

from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "shipped" / "emoji"  # package data, so a wheel carries it
JUDGE = SHIPPED.parent / "judge"  # the evaluation-only judge (unclip eval / report)


def default_model_dir() -> Path | None:
    """The model shipped in the repository, when this checkout has it."""
    return SHIPPED if SHIPPED.is_dir() else None


def ar_prior_dir(path: Path) -> Path:
    """Where a model directory's autoregressive prior is: in it, else beside it in NAME-ar_prior/ (the paper's
    ablation, not used to generate by default; the shipped model keeps it there, outside its 60 MB)."""
    path = Path(path)
    return path if (path / "ar_prior_config.json").exists() else path.with_name(path.name + "-ar_prior")


STAGE_FILES = {
    "clip": ["clip.safetensors", "clip_config.json"],  # (+ clip_pca.safetensors when the source has it)
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
        if src.resolve() == out.resolve():
            raise ValueError(f"assemble: the {stage} source is the destination itself ({out}); nothing to copy")
        missing = [f for f in STAGE_FILES[stage] if not (src / f).exists()]
        if missing:
            raise FileNotFoundError(f"{src} is not a {stage} export: missing {', '.join(missing)}")
        files = list(STAGE_FILES[stage])
        if stage == "decoder":  # its high-noise expert (Decoder.expert) when the export has one, else none
            files.append("decoder_expert")
            if not (src / "decoder_expert").exists():
                shutil.rmtree(out / "decoder_expert", ignore_errors=True)
                files.pop()
        if stage == "clip":  # a PCA of the old CLIP's z_i would describe another space: the new one's, or none
            files.append("clip_pca.safetensors")
            if not (src / "clip_pca.safetensors").exists():
                (out / "clip_pca.safetensors").unlink(missing_ok=True)
                files.pop()
        for f in files:
            s, d = src / f, out / f
            if s.is_dir():
                shutil.rmtree(d, ignore_errors=True)
                shutil.copytree(s, d)
            else:
                shutil.copy2(s, d)
    return out


def attach_expert(model_dir: Path, expert: Path, expert_from: int) -> Path:
    """Make the decoder export `expert` (a run's model/ dir) the high-noise expert of the model in
    `model_dir`: copied to MODEL/decoder_expert (swapped in whole), the steps t >= expert_from handed to
    it (Decoder.expert). MODEL's own expert as `expert`: only expert_from changes."""
    import json
    import shutil

    from unclip.decoder import DecoderConfig
    from unclip.fsutil import write_bytes_atomic  # (keeps the config's key order)
    from unclip.train import _fresh_dir, _swap_in

    model_dir, expert = Path(model_dir), Path(expert).expanduser()
    missing = [f for f in STAGE_FILES["decoder"] if not (expert / f).exists()]
    if missing:
        raise FileNotFoundError(f"{expert} is not a decoder export: missing {', '.join(missing)}")
    theirs = json.loads((expert / "decoder_config.json").read_text())
    if theirs.get("expert_from") is not None:
        raise ValueError(f"{expert} has a high-noise expert of its own; an expert is one network")
    config = json.loads((model_dir / "decoder_config.json").read_text())
    DecoderConfig(**{**config, "expert_from": expert_from})  # validates expert_from
    # the two networks' outputs are mixed per step: the same image size, z_i and output channels
    differ = [k for k in ("sample_size", "clip_embed_dim", "learned_variance") if theirs.get(k) != config.get(k)]
    if differ:
        raise ValueError(f"{expert} does not fit the decoder in {model_dir}: "
                         + ", ".join(f"{k} {theirs.get(k)} vs {config.get(k)}" for k in differ))
    final = model_dir / "decoder_expert"
    if expert.resolve() != final.resolve():
        tmp = _fresh_dir(final)
        shutil.copytree(expert, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("decoder_expert"))
        _swap_in(tmp, final)
    config["expert_from"] = expert_from
    write_bytes_atomic(model_dir / "decoder_config.json", json.dumps(config, indent=1).encode())
    return model_dir


def model_hash(path: Path) -> str:
    """A short hash of a model directory's weights and configs, whole files (recorded in generated PNGs;
    ~0.1 s for the shipped 50 MB): any changed tensor or setting (guidance, mean colour) changes it."""
    import hashlib

    from unclip.fsutil import file_hash

    path = Path(path)
    h = hashlib.sha256()
    for f in sorted([*path.rglob("*.safetensors"), *path.rglob("*.json")]):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(file_hash(f).encode())
    return h.hexdigest()[:12]
