"""Every method the config accepts is registered under its name, and declares its domains from the config alone."""

from reid_accel.config import METHOD_NAMES, DomainConfig, load_config
from reid_accel.methods import METHODS, Method


def test_the_registry_and_the_config_name_the_same_methods():
    assert tuple(METHODS) == METHOD_NAMES
    for name, method in METHODS.items():
        assert issubclass(method, Method) and method.name == name


def test_methods_declare_their_training_domains_before_any_data_is_read():
    target = "data.target={name: synthetic, root: b}"
    cail = METHODS["cail"](load_config(None, [target]))
    assert set(cail.domains) == {"data.source", "data.target"} and cail.two_domains
    baseline = METHODS["cail"](load_config(None, ["objective.target_branch=false", target]))
    assert set(baseline.domains) == {"data.source"} and not baseline.two_domains
    clustering = METHODS["camera_proxy"](load_config(None, ["method.name=camera_proxy", target]))
    assert clustering.domains == {"data.target": DomainConfig(name="synthetic", root="b")}
    assert not clustering.two_domains
