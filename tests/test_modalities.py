"""data_prep.modalities: the one rule for which modalities a dataset has."""
import json
import pickle

import pytest

from data_prep.modalities import MASK_KEYS, Modalities


def test_canonical_order_and_tuple_behaviour():
    m = Modalities(["a", "t", "v"])
    assert m == ("v", "t", "a") and tuple(m) == ("v", "t", "a")
    assert m.count == 3 and m.has_audio and m.names == ("image", "text", "audio")
    two = Modalities(("t", "v"))
    assert two == ("v", "t") and two.count == 2 and not two.has_audio and "a" not in two
    assert two.mask_keys == ("t", "v", "all") and m.mask_keys == MASK_KEYS[3]


def test_of_count_and_of_mask():
    assert Modalities.of_count(2) == ("v", "t") and Modalities.of_count(3) == ("v", "t", "a")
    assert Modalities.of_mask({"t", "v", "all"}) == ("v", "t")
    for audio_key in ("a", "tv", "ta", "va"):
        assert Modalities.of_mask({"t", audio_key}) == ("v", "t", "a")
    assert Modalities.of_mask(()) == ("v", "t")  # an empty mask: the two-modality default


def test_resolve_prefers_feature_tables():
    assert Modalities.resolve(("t", "v", "a"), ("t",)) == ("v", "t", "a")
    assert Modalities.resolve((), ("va", "all")) == ("v", "t", "a")
    assert Modalities.resolve((), ()) == ("v", "t")


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown modality code\(s\) \['x'\]"):
        Modalities(["v", "x"])
    with pytest.raises(ValueError, match="repeat"):
        Modalities(["v", "v"])
    with pytest.raises(ValueError, match="2 or 3 modalities, not 1"):
        Modalities.of_count(1)
    with pytest.raises(ValueError, match="masks need 2 or 3 modalities, not 1"):
        Modalities(["v"]).mask_keys


def test_survives_pickle_and_json():
    m = Modalities(("v", "t", "a"))
    back = pickle.loads(pickle.dumps(m))
    assert type(back) is Modalities and back == m
    assert json.loads(json.dumps(m)) == ["v", "t", "a"]
