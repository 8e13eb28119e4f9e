import pytest

from conftest import NPM, pack
from unclip.data.captions import label_text, make_captions
from unclip.data.emojidb import EmojiDB, norm_hex


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    d = tmp_path_factory.mktemp("db")
    (d / "eb.tgz").write_bytes(pack(NPM / "emojibase-data"))
    (d / "om.tgz").write_bytes(pack(NPM / "openmoji"))
    return EmojiDB.from_packages(d / "eb.tgz", d / "om.tgz")


@pytest.mark.parametrize("raw,want", [
    ("1f44b-1F3FB", "1F44B-1F3FB"), ("0023-fe0f-20e3", "0023-20E3"), ("23-20e3", "0023-20E3"),
    ("2764-fe0f", "2764"), ("1f600_fe0f", "1F600"),
])
def test_norm_hex(raw, want):
    assert norm_hex(raw) == want


def test_skin_tones_fold_into_one_concept(db):
    dark = db.get("1F44B-1F3FF")
    assert dark.label == "waving hand: dark skin tone" and dark.tone == "dark"
    assert dark.concept == "1F44B" == db.get("1F44B").concept
    assert db.get("1F44B").tone is None


@pytest.mark.parametrize("name,want", [
    ("grinning-cat", "1F63A"), ("cat", "1F408"),  # the label 'cat' wins over the shortcode of 'cat face'
    ("waving-hand-default", "1F44B"), ("waving-hand-dark", "1F44B-1F3FF"), ("keycap-hashtag", "0023-20E3"),
    ("red-heart", "2764"), ("no-such-emoji", None), ("waving-hand-dark-skin-tone", "1F44B-1F3FF"),
])
def test_fluent_names_map_to_hexcodes(db, name, want):
    assert db.name_hexcode(name) == want


def test_openmoji_extras_get_labels(db):
    assert db.get("E000").label == "goldfish"


def test_captions_canonical_first_distinct_and_deterministic(db):
    info = db.get("1F44B-1F3FF")
    caps = make_captions(info, ("3D", "Fluent 3D"), "fluent-3d_1F44B-1F3FF")
    assert caps[0] == "waving hand, dark skin tone, 3D style"
    assert len(caps) == len(set(caps)) >= 4
    assert caps == make_captions(info, ("3D", "Fluent 3D"), "fluent-3d_1F44B-1F3FF")
    assert all("waving hand" in c or "wave" in c for c in caps)
    assert label_text("keycap: #") == "keycap, #"
