"""Stage name -> training task. Imports are lazy so a stage's dependencies load only when used."""

STAGES = ("clip", "prior", "ar_prior", "decoder", "upsampler")


def make_task(cfg):
    task = _make_task(cfg)
    if getattr(cfg, "lora_rank", 0):
        from unclip.lora import LoRATask

        return LoRATask(task, cfg.stage, cfg.init_from, cfg.lora_rank, cfg.lora_alpha)
    return task


def _make_task(cfg):
    if cfg.stage == "clip":
        from unclip.clip_task import CLIPTask

        return CLIPTask(cfg)
    if cfg.stage == "prior":
        from unclip.prior import PriorTask

        return PriorTask(cfg)
    if cfg.stage == "ar_prior":
        from unclip.ar_prior import ARPriorTask

        return ARPriorTask(cfg)
    if cfg.stage == "decoder":
        from unclip.decoder import DecoderTask

        return DecoderTask(cfg)
    if cfg.stage == "upsampler":
        from unclip.upsampler import UpsamplerTask

        return UpsamplerTask(cfg)
    raise ValueError(f"unknown stage {cfg.stage!r}; stages: {', '.join(STAGES)}")
