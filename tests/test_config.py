"""Configuration: validation, precedence, round trip, config files."""

import json

import pytest

from tflite_cluster import ClusterConfig, ConfigError, Granularity, InputFileError, Settings, load_config


def test_defaults():
    c = ClusterConfig()
    assert (c.k, c.granularity, c.space.value, c.method.value, c.min_elements) == (16, Granularity.CHANNEL, "auto", "optimal", 1024)
    assert c.tolerance == 1e-4


@pytest.mark.parametrize("bad", [{"k": 0}, {"k": "8"}, {"k": True}, {"granularity": "row"}, {"space": "int4"},
                                 {"method": "lloyd"}, {"init": "zeros"}, {"min_elements": -1},
                                 {"granularity": "group"}, {"seed": -3}, {"group_size": 0},
                                 {"tolerance": -0.1}, {"tolerance": 0.01}, {"tolerance": "1e-4"},
                                 {"tolerance": True}, {"tolerance": float("nan")},
                                 {"op_types": {"CONV_2D": {"tolerance": 1}}}])
def test_bad_values_rejected(bad):
    with pytest.raises(ConfigError):
        ClusterConfig.from_dict(bad)


def test_unknown_keys_rejected_everywhere():
    with pytest.raises(ConfigError, match="colour"):
        ClusterConfig.from_dict({"colour": 1})
    with pytest.raises(ConfigError, match="op_types.CONV_2D.*kk"):
        ClusterConfig.from_dict({"op_types": {"CONV_2D": {"kk": 3}}})
    with pytest.raises(ConfigError, match=r"names\[0\]"):
        ClusterConfig.from_dict({"names": [{"regex": "a", "bogus": 1}]})
    with pytest.raises(ConfigError, match="regular expression"):
        ClusterConfig.from_dict({"names": [{"regex": "("}]})


def test_precedence_name_over_op_over_global():
    c = ClusterConfig.from_dict({
        "k": 16,
        "op_types": {"DEPTHWISE_CONV_2D": {"k": 32, "granularity": "tensor"}, "CONV_2D": "skip"},
        "names": [{"regex": "dw.*", "k": 8}, {"regex": "dw_last", "k": 4}],
    })
    s, applied = c.resolve("dw_first", ("DEPTHWISE_CONV_2D",))
    assert (s.k, s.granularity, applied) == (8, Granularity.TENSOR, ["op_types.DEPTHWISE_CONV_2D", "names[0]"])
    s, _ = c.resolve("dw_last", ("DEPTHWISE_CONV_2D",))
    assert s.k == 4  # last matching name rule wins
    s, _ = c.resolve("conv", ("CONV_2D",))
    assert s.skip
    s, applied = c.resolve("fc", ("FULLY_CONNECTED",))
    assert (s.k, applied) == (16, [])
    # full match, not search
    s, _ = c.resolve("xdw_first", ("FULLY_CONNECTED",))
    assert s.k == 16


def test_round_trip():
    d = {"k": 8, "granularity": "group", "group_size": 4, "space": "float", "method": "kmeans",
         "init": "linear", "preserve_sparsity": True, "min_elements": 10, "tolerance": 0.0,
         "seed": 7, "op_types": {"CONV_2D": {"k": 4, "tolerance": 0.001}, "FULLY_CONNECTED": "skip"},
         "names": [{"regex": "a.*", "k": 2, "granularity": "tensor"}, {"regex": "b", "skip": True}]}
    c = ClusterConfig.from_dict(d)
    assert ClusterConfig.from_dict(c.to_dict()) == c
    assert c.to_dict() == d


def test_frozen():
    with pytest.raises(Exception):
        ClusterConfig().k = 3


def test_settings_over():
    base = ClusterConfig().global_settings()
    assert Settings(k=4).over(base).k == 4
    assert Settings(skip=True).over(base).skip


def test_load_config_errors_name_the_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(InputFileError, match="c.json.*not valid JSON"):
        load_config(p)
    p.write_text(json.dumps({"k": 3, "extra": 1}))
    with pytest.raises(InputFileError, match="c.json.*unknown key"):
        load_config(p)
    with pytest.raises(InputFileError, match="no-such.json"):
        load_config(tmp_path / "no-such.json")
    p.write_text(json.dumps({"k": 3}))
    assert load_config(p).k == 3
