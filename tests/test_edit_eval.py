"""unclip eval-edits: the zero-shot style judge, the path measures and the whole run on a tiny model."""

import json

import pytest
import torch
import torch.nn.functional as F


def _judge():
    from unclip.clip import CLIPConfig, LockedTextCLIP

    torch.manual_seed(0)
    return LockedTextCLIP(CLIPConfig(image_tower="convnext", image_size=16, depths=(1, 1), hidden_sizes=(8, 16),
                                     embed_dim=32))


class _Texts:
    """A judge view whose text embedding is the basis vector of the style name a caption holds."""

    def __init__(self, names):
        self.names = names

    def texts(self, captions):
        out = torch.zeros(len(captions), 8)
        for i, c in enumerate(captions):
            hit = [k for k, ns in enumerate(self.names.values()) if any(f" {n} " in f" {c} " for n in ns)]
            out[i, hit[0]] = 1.0
        return out


def test_judged_styles_picks_the_style_whose_names_match_the_image():
    from unclip.edit_eval import judged_styles

    names = {"a": ("glossy",), "b": ("flat", "plain"), "c": ("3D",)}
    view = _Texts(names)
    emb = F.normalize(torch.tensor([[0.0, 1, 0.1, 0, 0, 0, 0, 0], [0.2, 0, 1, 0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0, 0, 0]]),
                      dim=-1)
    got = judged_styles(view, emb, ["cat", "cat", "dog"], ["a", "b", "c"], names)
    assert got.tolist() == [1, 2, 0]
    assert judged_styles(view, emb, ["cat"] * 3, ["c", "b", "a"], names).tolist() == [1, 0, 2]  # indices into `styles`


def test_path_metrics_tell_an_even_path_from_a_jump():
    from unclip.edit_eval import path_metrics
    from unclip.pipeline import slerp

    a = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    b = F.normalize(torch.randn(1, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    even = torch.cat([slerp(a, b, float(t)) for t in torch.linspace(0, 1, 6)])
    m = path_metrics(even, a[0], b[0])
    assert m["evenness"] == pytest.approx(1.0, abs=1e-4) and m["monotone"] == 1.0
    assert m["start_cosine"] == pytest.approx(1.0, abs=1e-5) and m["end_cosine"] == pytest.approx(1.0, abs=1e-5)
    jump = torch.cat([a] * 3 + [b] * 3)  # every change in one step of five
    j = path_metrics(jump, a[0], b[0])
    assert j["evenness"] == pytest.approx(5.0) and j["monotone"] == pytest.approx(0.2)
    back = path_metrics(even.flip(0), a[0], b[0])  # from b to a: every step away from the end image
    assert back["monotone"] == 0.0 and back["start_cosine"] < 1
    with pytest.raises(ValueError, match="at least 2 frames"):
        path_metrics(even[:1], a[0], b[0])


def test_eval_edits_runs_every_edit_on_a_tiny_model(tiny_model_dir, built_dataset):
    import copy

    import numpy as np

    import unclip
    from unclip.edit_eval import evaluate_edits, paired_edits

    r = evaluate_edits(unclip.load(tiny_model_dir), _judge(), built_dataset, n=4, variations_per_image=2, frames=3,
                       thetas=(0.0, 0.5), decoder_steps=2, progress=False)
    assert r["n"] == 4 and len(r["styles"]) >= 2
    v = r["variations"]
    assert v["per_image"] == 2 and -1 <= v["cosine"] <= 1 and all(0 <= v[k] <= 1 for k in ("top5", "style_kept", "style_true"))
    i = r["interpolations"]
    assert i["pairs"] == 2 and i["unclip"]["evenness"] >= 1 and 0 <= i["unclip"]["precision_interior"] <= 1
    fade = i["crossfade"]  # its end frames are the sources themselves
    assert fade["start_cosine"] == pytest.approx(1.0, abs=1e-5) and fade["end_cosine"] == pytest.approx(1.0, abs=1e-5)
    d = r["text_diffs"]["per_theta"]
    assert [m["theta"] for m in d] == [0.0, 0.5] and all(0 <= m["target_style"] <= 1 for m in d)
    assert len(v["values"]["cosine"]) == 4 and np.mean(v["values"]["cosine"]) == pytest.approx(v["cosine"], abs=1e-6)
    assert len(i["unclip"]["values"]["evenness"]) == 2 and d[1]["values"]["top5"] and len(d[1]["values"]["cosine"]) == 4
    same = paired_edits(r, r)  # a report against itself: every difference 0
    assert all(x["mean"] == 0 and x["ci95"] == [0, 0] for sec in ("variations", "interpolations") for x in same[sec].values())
    assert set(same["text_diffs"]) == {"0.0", "0.5"}
    shifted = copy.deepcopy(r)
    shifted["variations"]["values"]["cosine"] = [c + 0.1 for c in r["variations"]["values"]["cosine"]]
    up = paired_edits(r, shifted)["variations"]["cosine"]
    assert up["mean"] == pytest.approx(0.1) and up["ci95"][0] == pytest.approx(0.1) and up["ci95"][1] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same images and noise"):
        paired_edits(r, {**r, "n": 8})
    bare = copy.deepcopy(r)
    del bare["variations"]["values"]
    with pytest.raises(ValueError, match="per-image values"):
        paired_edits(bare, r)
    for bad, match in (({"n": 1}, "at least 2"), ({"frames": 2}, "at least 3"), ({"thetas": ()}, "thetas"),
                       ({"variations_per_image": 0}, "at least 1"), ({"eta": 1.5}, "eta must be"),
                       ({"decoder_steps": 0}, "decoder_steps must be"), ({"sections": ["edits"]}, "sections must be")):
        with pytest.raises(ValueError, match=match):
            evaluate_edits(None, None, built_dataset, **bad)


def test_eval_edits_from_the_cli_prints_json(tiny_model_dir, built_dataset, tmp_path, capsys):
    from unclip.cli import main

    judge = tmp_path / "judge"
    _judge().save(judge)
    args = ["eval-edits", "--model", str(tiny_model_dir), "--judge", str(judge), "--data", str(built_dataset), "--n", "2",
            "--variations", "1", "--frames", "3", "--thetas", "0,0.3", "--decoder-steps", "2"]
    assert main(args + ["--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 2 and r["model"] == str(tiny_model_dir) and len(r["text_diffs"]["per_theta"]) == 2
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "variations (1 per image" in out and "crossfade" in out and "text diff theta 0.30" in out
    (tmp_path / "base.json").write_text(json.dumps(r))
    assert main(args + ["--paired-with", str(tmp_path / "base.json")]) == 0  # the same model: differences 0
    assert "variations minus base.json, same images: cosine +0.0000 [+0.0000, +0.0000]" in capsys.readouterr().out
    (tmp_path / "eval.json").write_text(json.dumps({"splits": {}}))  # an `unclip eval` report, not this command's
    assert main(args + ["--paired-with", str(tmp_path / "eval.json")]) == 2
    assert "not an `unclip eval-edits --json` report" in capsys.readouterr().err
    assert main(args + ["--inversion", "--eta", "0"]) == 0  # variations from the inverted x_T at η = 0: reconstructions
    assert "eta 0, from the inverted x_T" in capsys.readouterr().out
    assert main(args + ["--sections", "text_diffs", "--json"]) == 0  # one section: the same images and noise
    only = json.loads(capsys.readouterr().out)
    assert "variations" not in only and "interpolations" not in only and only["text_diffs"] == r["text_diffs"]
    assert main(args[:-2] + ["--frames", "2"]) == 2
    assert "frames must be at least 3" in capsys.readouterr().err
