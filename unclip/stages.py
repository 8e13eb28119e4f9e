"""Stage name -> training task. Imports are lazy so a stage's dependencies load only when used."""

STAGES = ("clip", "prior", "ar_prior", "decoder", "upsampler")


def make_task(cfg):
    if cfg.stage == "clip":
        from unclip.clip_task import CLIPTask

        return CLIPTask(cfg)
    raise ValueError(f"unknown stage {cfg.stage!r}; stages: {', '.join(STAGES)}")
