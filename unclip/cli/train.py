"""`unclip train`, `finetune`, `retrieval`, `pca` and `presets`."""

import json
from pathlib import Path

from unclip.cli.common import model_dir
from unclip.paths import default_data_dir


def register(sub) -> None:
    from unclip.stages import STAGES

    t = sub.add_parser("train", help="train one stage (resumable; runs under `accelerate launch` too)")
    t.add_argument("stage", choices=STAGES)
    t.add_argument("--preset", default="small", help="model size preset (see unclip/presets/STAGE.json)")
    t.add_argument("--data", type=Path, default=default_data_dir())
    t.add_argument("--out", type=Path, help="run directory (default: ~/.cache/unclip/runs/STAGE-PRESET)")
    t.add_argument("--max-steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=64, help="global batch per optimizer step")
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--lr-schedule", choices=("constant", "cosine", "wsd"), default="constant",
                   help="after warm-up: constant; cosine to 0 at --max-steps; wsd: constant, then a cosine to 0 "
                        "over the last --decay-steps (a resumed constant run can switch to it)")
    t.add_argument("--decay-steps", type=int, default=0, help="the wsd schedule's decay length")
    t.add_argument("--warmup-steps", type=int, default=200)
    t.add_argument("--ema-decay", type=float, default=0.999)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save-minutes", type=float, default=5.0, help="checkpoint interval in minutes")
    t.add_argument("--eval-every", type=int, default=250, help="held-out loss every N steps")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    t.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto")
    t.add_argument("--fsdp", action="store_true", help="shard weights and optimizer state across processes (FSDP2)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model (inductor): faster steps after a "
                   "compile of a minute or two at the start")
    t.add_argument("--resume", action="store_true", help="continue from the run's checkpoint when present")
    t.add_argument("--init-from", type=Path, help="start from these weights when there is no checkpoint")
    t.add_argument("--option", action="append", metavar="KEY=VALUE", help="stage-specific setting (repeatable)")
    t.add_argument("--export", choices=("best", "last"), default="best",
                   help="write run/model when the held-out loss improves (best) or at every checkpoint (last: fine-tunes)")
    t.add_argument("--no-previews", dest="previews", action="store_false",
                   help="no sample picture at each checkpoint (run/previews/; a decoder's costs ~25 s on a CPU)")
    t.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank on --init-from (decoder, prior)")
    t.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the rank)")
    t.add_argument("--train-only", help="comma-separated parameter-name prefixes to train, e.g. text_proj (default: all)")
    t.set_defaults(fn=_train)

    r = sub.add_parser("retrieval", help="zero-shot concept retrieval of the CLIP stage on held-out images and concepts")
    r.add_argument("--data", type=Path, default=default_data_dir())
    r.add_argument("--clip", type=Path, help="CLIP stage directory (default: the shipped model, else the CLIP run)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=_retrieval)

    ft = sub.add_parser("finetune", help="import your images, embed them and fine-tune the prior and decoder, in one go")
    ft.add_argument("src", type=Path, help="a folder of captioned images or WebDataset .tar shards (see `data import`)")
    ft.add_argument("--out", type=Path, required=True, help="where data/, runs/, model/ (or lora/) and before_after.png go")
    ft.add_argument("--base", type=Path, help="model to start from (default: the shipped model)")
    ft.add_argument("--steps", type=int, default=200,
                    help="optimizer steps per stage (200: prior, decoder and expert in ~25 min on 2 CPU cores)")
    ft.add_argument("--batch-size", type=int, default=16)
    ft.add_argument("--lr", type=float, default=2e-4)
    ft.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank instead of every weight")
    ft.add_argument("--no-prior", action="store_true", help="fine-tune the decoder only (captions like the base's)")
    ft.add_argument("--default-caption", help="caption for images that have none")
    ft.add_argument("--style", help="style name recorded for the images")
    ft.add_argument("--style-prompts", type=int, default=16,
                    help="held-out captions for the style retrieval measure, before vs after (0: skip it)")
    ft.add_argument("--base-data", type=Path, help="the base model's dataset, for the other styles (default: the default data dir)")
    ft.add_argument("--threads", type=int, default=0)
    ft.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto",
                    help="as for `train` (auto: bf16 on a GPU, fp32 on a CPU; bf16 is faster on CPUs with AMX)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--json", action="store_true")
    ft.set_defaults(fn=_finetune)

    pc = sub.add_parser("pca", help="fit the PCA of the training split's z_i into the model directory (for `probe`)")
    pc.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    pc.add_argument("--data", type=Path, default=default_data_dir())
    pc.set_defaults(fn=_pca)

    pr = sub.add_parser("presets", help="list every model size preset with its parameter count")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(fn=_presets)


def _train(a) -> int:
    from unclip.train import TrainConfig, train

    options = {}
    for kv in a.option or []:
        k, sep, v = kv.partition("=")
        if not sep:
            raise ValueError(f"--option takes KEY=VALUE, not {kv!r}")
        try:
            options[k] = json.loads(v)  # numbers, booleans, lists
        except ValueError:
            options[k] = v  # a plain string, e.g. a path
    cfg = TrainConfig(stage=a.stage, preset=a.preset, data=a.data, out=a.out, max_steps=a.max_steps,
                      batch_size=a.batch_size, grad_accum=a.grad_accum, lr=a.lr, warmup_steps=a.warmup_steps,
                      ema_decay=a.ema_decay, seed=a.seed, save_minutes=a.save_minutes, threads=a.threads,
                      mixed_precision=a.mixed_precision, resume=a.resume, init_from=a.init_from,
                      lr_schedule=a.lr_schedule, decay_steps=a.decay_steps, eval_every=a.eval_every, fsdp=a.fsdp, compile=a.compile,
                      options=options,
                      lora_rank=a.lora_rank, lora_alpha=a.lora_alpha, export=a.export, train_only=a.train_only or "",
                      previews=a.previews)
    result = train(cfg)
    print(json.dumps(result))
    return 0


def _finetune(a) -> int:
    from unclip.finetune import FinetuneConfig, finetune

    r = finetune(FinetuneConfig(src=a.src, out=a.out, base=a.base, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                lora_rank=a.lora_rank, prior=not a.no_prior, default_caption=a.default_caption,
                                style=a.style, threads=a.threads, mixed_precision=a.mixed_precision, seed=a.seed,
                                style_prompts=a.style_prompts, base_data=a.base_data))
    print(json.dumps(r) if a.json else f"wrote {r['model']} and {r['before_after']}")
    return 0


def _retrieval(a) -> int:
    from unclip.clip_task import concept_retrieval
    from unclip.conditioning import default_clip_dir, load_clip_dir

    clip = load_clip_dir(a.clip or default_clip_dir())
    rows = [concept_retrieval(clip, a.data, split) for split in ("heldout_images", "heldout_concepts")]
    if a.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['split']:<18} {r['images']:>6} images  top-1 {r['top1']:.3f}  top-5 {r['top5']:.3f}  "
                  f"(among {r['candidates']} concepts)")
    return 0


def _pca(a) -> int:
    import numpy as np
    import torch

    from unclip.conditioning import Conditioning
    from unclip.pca import fit_pca, save_pca

    model = model_dir(a)
    z = Conditioning(a.data, "train", model).image_embed  # (N, D), computed by `unclip embed` if missing
    pca = fit_pca(torch.from_numpy(np.asarray(z, dtype=np.float32)))
    path = save_pca(pca, model)
    share = (pca["variance"].cumsum(0) / pca["variance"].sum())
    print(f"wrote {path} from {len(z)} z_i; variance explained by 1/8/32/64 components: "
          + " / ".join(f"{float(share[k - 1]):.3f}" for k in (1, 8, 32, 64)))
    return 0


def _presets(a) -> int:
    from unclip.bench import preset_table

    rows = preset_table()
    if a.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['stage']:>10} {r['preset']:<14} {r['params'] / 1e6:>10.2f}M")
    return 0
