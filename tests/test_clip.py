import torch

from unclip.clip import CLIPConfig, LockedTextCLIP, TextTower
from unclip.clip_task import random_crop_resize


def test_text_tower_mean_pooling_matches_sentence_transformers_recipe():
    tower = TextTower()
    pooled, hidden, mask = tower(["a grinning cat, 3D style", "pizza"])
    assert hidden.shape[:2] == mask.shape and pooled.shape == (2, 384)
    manual = hidden[1][mask[1]].mean(0)
    torch.testing.assert_close(pooled[1], manual)
    # all-MiniLM-L6-v2 knows paraphrases: "feline" is closer to "cat" than to "pizza"
    p, _, _ = tower(["cat", "feline", "pizza"])
    p = torch.nn.functional.normalize(p, dim=-1)
    assert p[1] @ p[0] > p[1] @ p[2]


def test_locked_text_clip_shapes_norms_and_frozen_text():
    torch.manual_seed(0)
    model = LockedTextCLIP(CLIPConfig(embed_dim=16, image_size=16, patch_size=4, width=32, layers=1, heads=2))
    enc = model.encode_text(["a cat", "a red heart, Noto style"])
    z_i = model.encode_image(torch.rand(3, 3, 32, 32) * 2 - 1)  # resized to the tower's 16 px
    assert enc.text_embed.shape == (2, 16) and z_i.shape == (3, 16)
    torch.testing.assert_close(z_i.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(enc.text_embed.norm(dim=-1), torch.ones(2))
    names = {n for n, _ in model.named_parameters()}
    assert not any("text_tower" in n for n in names), "the text tower must stay out of the trainable weights"
    assert any(n.startswith("text_proj") for n in names)


def test_clip_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    cfg = CLIPConfig(embed_dim=16, image_size=16, patch_size=4, width=32, layers=1, heads=2)
    model = LockedTextCLIP(cfg).eval()
    model.save(tmp_path)
    again = LockedTextCLIP.load(tmp_path, model.text_tower)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(again.encode_image(x), model.encode_image(x), atol=2e-3, rtol=0)  # fp16 on disk


def test_random_crop_is_per_sample_and_identity_at_scale_one():
    x = torch.rand(2, 3, 8, 8)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    torch.testing.assert_close(random_crop_resize(x, gens, min_scale=1.0), x, atol=1e-5, rtol=0)
    a = random_crop_resize(x, [torch.Generator().manual_seed(1)] * 2, 0.5)
    b = random_crop_resize(x, [torch.Generator().manual_seed(1)] * 2, 0.5)
    torch.testing.assert_close(a, b)


def test_transformers_clipmodel_directory_loads_as_a_clip_stage(tmp_path):
    """A tiny random CLIPModel + CLIPTokenizer saved to disk gives transformers' own embeddings."""
    import string

    from transformers import CLIPConfig as HFConfig
    from transformers import CLIPModel, CLIPTokenizer

    from unclip.clip import HFCLIP, load_clip

    chars = list(string.ascii_lowercase) + [",", "."]
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars])}
    tok = CLIPTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = HFConfig(text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "max_position_embeddings": 16, "eos_token_id": 1, "bos_token_id": 0,
                                "pad_token_id": 1},
                   vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "image_size": 32, "patch_size": 8},
                   projection_dim=24)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(tmp_path / "clip", safe_serialization=True)
    tok.save_pretrained(tmp_path / "clip")

    stage = load_clip(tmp_path / "clip")
    assert isinstance(stage, HFCLIP) and stage.embed_dim == 24
    enc = stage.encode_text(["a cat", "pizza, noto"])
    ids = tok(["a cat", "pizza, noto"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        ref_text = model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
    ref_text = ref_text if torch.is_tensor(ref_text) else ref_text.pooler_output
    torch.testing.assert_close(enc.text_embed, torch.nn.functional.normalize(ref_text, dim=-1), atol=1e-5, rtol=0)
    assert enc.hidden_states.shape == (2, 16, 32) and enc.mask.sum() == ids.attention_mask.sum()

    pixels = torch.rand(2, 3, 32, 32) * 2 - 1  # already at the tower's size: only normalisation applies
    mean = torch.tensor(HFCLIP.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(HFCLIP.STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref_image = model.get_image_features(pixel_values=((pixels + 1) / 2 - mean) / std)
    ref_image = ref_image if torch.is_tensor(ref_image) else ref_image.pooler_output
    torch.testing.assert_close(stage.encode_image(pixels), torch.nn.functional.normalize(ref_image, dim=-1), atol=1e-4, rtol=0)
