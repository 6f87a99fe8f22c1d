"""TensorRT profiles: the bundled data, its evidence rules, and located errors for bad profile files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from netdsl.coverage.checks import NUMERIC, PREDICATES
from netdsl.coverage.profile import (
    BUNDLED_PROFILES,
    CHECKS,
    LEVELS,
    STATUS_LEVEL,
    STATUSES,
    ProfileError,
    check_kind,
    load_profile,
    parse_profile,
)

MINIMAL = """
[profile]
name = "mine"

[sources]
DOC = "https://example.org/trt"

[ops.Conv]
layer = "IConvolutionLayer"
status = "confirmed"
source = "DOC"
"""


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", BUNDLED_PROFILES)
def test_bundled_profiles_load_with_resolvable_sources(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name and profile.ops
    for rule in profile.ops.values():
        assert rule.status in STATUSES and rule.layer
        assert rule.source, f"{name}: {rule.op} has no source"
        for tag in rule.source + tuple(t for limit in rule.limits for t in limit.source):
            assert profile.source_url(tag).startswith("https://"), (rule.op, tag)
        if not rule.allowed:
            assert rule.note, f"{name}: disallowed {rule.op} gives no reason"
        if rule.assumed:
            assert "not verified" in rule.assumption, f"{name}: {rule.op} assumption hides that it is unverified"


def test_every_check_name_has_a_measurement() -> None:
    assert set(NUMERIC) | set(PREDICATES) == set(CHECKS)
    assert set(NUMERIC) == {c for c, spec in CHECKS.items() if spec.kind == "numeric"}
    assert check_kind("attr:mode") == "value" and check_kind("attr:") is None and check_kind("kernal") is None


def test_restricted_allows_the_conv_only_layer_set() -> None:
    profile = load_profile("trt-restricted")
    for op in ("Conv", "Relu", "Sigmoid", "BatchNormalization", "Add", "Sub", "Mul", "Div", "Reshape", "Transpose",
               "Flatten", "Squeeze", "Unsqueeze", "Concat", "Slice", "Split", "Softmax", "Resize", "AveragePool"):
        assert profile.rule_for(op).allowed, op
    # only the safe sample's layers are confirmed; the rest are declared assumptions
    assert not profile.rule_for("Conv").assumed and not profile.rule_for("Relu").assumed
    assert profile.rule_for("Softmax").assumed and profile.rule_for("Concat").assumed


@pytest.mark.parametrize("op", ["MatMul", "LayerNormalization", "Erf", "Gather", "ReduceMean", "Pad", "Where",
                                "Einsum"])
def test_restricted_rejects_transformer_ops_with_reason_and_rewrite(op: str) -> None:
    rule = load_profile("trt-restricted").rule_for(op)
    assert not rule.allowed
    assert rule.note and rule.rewrite and rule.source


def test_restricted_encodes_the_csa_reference_comments() -> None:
    profile = load_profile("trt-restricted")
    reduce_mean = profile.rule_for("ReduceMean")
    assert reduce_mean.status == "confirmed" and "CSA-REF" in reduce_mean.source
    resize_limits = {limit.check: limit for limit in profile.rule_for("Resize").limits}
    assert resize_limits["constant_scales"].status == "evidenced"
    assert "CSA-REF" in resize_limits["constant_scales"].source


# The ops of NVIDIA's CSA reference model, which NVIDIA states runs in restricted mode (csa-reference.md).
CSA_REFERENCE_OPS = ("BatchNormalization", "Sigmoid", "Mul", "Add", "Resize", "Reshape", "Transpose", "AveragePool",
                     "Squeeze")


def test_restricted_levels_follow_the_evidence() -> None:
    profile = load_profile("trt-restricted")
    for op in CSA_REFERENCE_OPS:
        rule = profile.rule_for(op)
        assert rule.allowed and rule.level == "evidenced" and "CSA-REF" in rule.source, op
    assert {profile.rule_for(op).level for op in ("Conv", "Relu")} == {"confirmed"}  # the safe sample's layers
    evidenced = [rule.op for rule in profile.ops.values() if rule.level == "evidenced"]
    assert sorted(evidenced) == sorted(CSA_REFERENCE_OPS)  # nothing else claims the CSA model's evidence
    assert {profile.rule_for(op).level for op in ("Softmax", "Concat", "Slice", "Sub")} == {"assumed"}


def test_status_levels() -> None:
    assert [STATUS_LEVEL[s] for s in STATUSES] == ["confirmed", "confirmed", "evidenced", "assumed"]
    assert set(STATUS_LEVEL.values()) == set(LEVELS)


def test_global_rules() -> None:
    restricted, standard, dla = (load_profile(n) for n in ("trt-restricted", "trt", "trt-dla"))
    assert restricted.global_value("static_shapes") and restricted.global_value("no_int64_runtime")
    assert restricted.global_value("max_rank") == 8 and restricted.global_value("max_volume") == 2**31 - 1
    assert "int64" not in restricted.global_value("dtypes")
    assert not standard.global_value("static_shapes") and "int64" in standard.global_value("dtypes")
    assert set(dla.global_value("dtypes")) == {"float32", "float16", "int8"}


def test_qdq_rules_need_zero_point_zero() -> None:
    for name in ("trt", "trt-restricted"):
        for op in ("QuantizeLinear", "DequantizeLinear"):
            checks = {limit.check for limit in load_profile(name).rule_for(op).limits}
            assert {"zero_point_zero", "per_tensor_or_per_channel"} <= checks


def test_user_profile_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + """
        [[ops.Conv.limits]]
        check = "kernel"
        min = 1
        max = 8
        source = "DOC"
        """, name="orin.toml")
    profile = load_profile(path)
    assert profile.name == "mine" and profile.path == str(path)
    (limit,) = profile.rule_for("Conv").limits
    assert (limit.min, limit.max, limit.bounds_text()) == (1, 8, "1..8")
    assert profile.rule_for("Relu") is None
    unnamed = write(tmp_path, MINIMAL.replace('name = "mine"', ""), name="fallback.toml")
    assert load_profile(unnamed).name == "fallback"


def line_of(text: str, line: str) -> int:
    """1-based number of ``line`` in the file :func:`write` makes of ``text``."""
    return textwrap.dedent(text).lstrip("\n").splitlines().index(line) + 1


def located(tmp_path: Path, text: str) -> ProfileError:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(info.value).startswith(str(path))
    return info.value


def test_bad_status_is_located(tmp_path: Path) -> None:
    text = MINIMAL.replace('status = "confirmed"', 'status = "probably"')
    err = located(tmp_path, text)
    assert err.key == "ops.Conv.status" and err.line == line_of(text, 'status = "probably"')
    assert "'probably' is not a status" in err.message and "documented for DLA" in err.message


def test_misspelt_key_gets_did_you_mean(tmp_path: Path) -> None:
    err = located(tmp_path, MINIMAL + '\n[[ops.Conv.limts]]\ncheck = "kernel"\nmax = 3\n')
    assert err.key == "ops.Conv.limts" and "did you mean 'limits'?" in err.message


def test_bad_limit_value_is_located(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[ops.Conv.limits]]\ncheck = "stride"\nmax = 8\n\n[[ops.Conv.limits]]\ncheck = "kernel"\n'
    text += 'max = "8"\n'
    err = located(tmp_path, text)
    assert err.key == "ops.Conv.limits[1].max" and err.line == line_of(text, 'max = "8"')
    assert "expected a number" in err.message


@pytest.mark.parametrize(("extra", "key", "fragment"), [
    ('\n[[ops.Conv.limits]]\ncheck = "kernal"\nmax = 3\n', "ops.Conv.limits[0].check", "did you mean 'kernel'?"),
    ('\n[[ops.Conv.limits]]\ncheck = "constant_params"\nmax = 3\n', "ops.Conv.limits[0]", "is a predicate"),
    ('\n[[ops.Conv.limits]]\ncheck = "kernel"\n', "ops.Conv.limits[0]", "needs min, max or one_of"),
    ('\n[[ops.Conv.limits]]\ncheck = "kernel"\nmin = 9\nmax = 3\n', "ops.Conv.limits[0]", "greater than max"),
    ('\n[global.max_rank]\nvalue = "8"\nstatus = "confirmed"\n', "global.max_rank.value", "expected int"),
    ('\n[global.max_rnak]\nvalue = 8\nstatus = "confirmed"\n', "global.max_rnak", "did you mean 'max_rank'?"),
    ('\n[global.dtypes]\nvalue = ["float33"]\nstatus = "confirmed"\n', "global.dtypes.value", "unknown dtype"),
    ('\n[ops.Erf]\nlayer = "IUnaryLayer"\nstatus = "unknown"\nallowed = true\n', "ops.Erf.assumption",
     "only be allowed with an 'assumption'"),
    ('\n[ops.Erf]\nlayer = "IUnaryLayer"\nstatus = "unknown"\nsource = "DOCS"\n', "ops.Erf.source",
     "unknown source tag 'DOCS'"),
])
def test_malformed_profiles(tmp_path: Path, extra: str, key: str, fragment: str) -> None:
    err = located(tmp_path, MINIMAL + extra)
    assert err.key == key and fragment in err.message


def test_unknown_op_defaults_to_not_allowed(tmp_path: Path) -> None:
    profile = parse_profile(MINIMAL + '\n[ops.Erf]\nlayer = "IUnaryLayer"\nstatus = "unknown"\n', "p.toml")
    assert not profile.rule_for("Erf").allowed and profile.rule_for("Conv").allowed


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    text = MINIMAL + "\n[ops.Relu\n"
    err = located(tmp_path, text)
    assert "invalid TOML" in err.message and err.line == line_of(text, "[ops.Relu")
    with pytest.raises(ProfileError, match="not one of trt, trt-restricted, trt-dla"):
        load_profile(tmp_path / "absent.toml")
    err = located(tmp_path, '[profile]\nname = "x"\n')
    assert err.key == "ops" and "missing" in err.message
