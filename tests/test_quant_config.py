import pytest

from lqsearch.errors import ConfigError
from lqsearch.quant import QuantConfig


@pytest.mark.parametrize(
    "spec, bits",
    [
        ("w4a4kv4", (4, 4, 4, 4)),
        ("w3a3k2v2", (3, 3, 2, 2)),
        ("w4a16", (4, 16, 16, 16)),
        ("W8A8KV8", (8, 8, 8, 8)),
        ("w16a16kv16", (16, 16, 16, 16)),
        ("w2a8k3v5", (2, 8, 3, 5)),
    ],
)
def test_parse(spec: str, bits: tuple[int, int, int, int]) -> None:
    config = QuantConfig.parse(spec)
    assert (config.w_bits, config.a_bits, config.k_bits, config.v_bits) == bits
    assert QuantConfig.parse(config.spec) == config


@pytest.mark.parametrize("spec", ["w1a4", "w4a4kv9", "w4a32", "w4", "a4w4", "w4a4kv", "four bits", ""])
def test_bad_specs_fail_with_one_line_and_an_example(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        QuantConfig.parse(spec)
    message = str(info.value)
    assert "\n" not in message and "w4a4kv4" in message


def test_full_precision_flag_and_denominator_check() -> None:
    assert QuantConfig.parse("w16a16").is_full_precision
    assert not QuantConfig.parse("w16a16k16v8").is_full_precision
    with pytest.raises(ConfigError, match="qmax"):
        QuantConfig.parse("w4a4", symmetric_denominator="qmax+1")
