"""Bit-widths and quantizer options, parsed from strings such as ``w4a4kv4``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from lqsearch.errors import ConfigError

FULL_PRECISION_BITS = 16
VALID_BITS = (2, 3, 4, 5, 6, 7, 8, FULL_PRECISION_BITS)
_SPEC = re.compile(r"^w(\d+)a(\d+)(?:kv(\d+)|k(\d+)v(\d+))?$")
_EXAMPLES = "e.g. 'w4a4kv4', 'w3a3k2v2', 'w4a16'"

Denominator = Literal["qmax", "qmax+0.5"]


@dataclass(frozen=True)
class QuantConfig:
    """What gets quantized, with how many bits (16 = kept in full precision).

    ``symmetric_denominator`` is the divisor of the symmetric scale: ``qmax``
    (FlatQuant/QuaRot) or ``qmax+0.5`` (compressed-tensors, llm-compressor).
    """

    w_bits: int = FULL_PRECISION_BITS
    a_bits: int = FULL_PRECISION_BITS
    k_bits: int = FULL_PRECISION_BITS
    v_bits: int = FULL_PRECISION_BITS
    w_symmetric: bool = True
    a_symmetric: bool = True
    symmetric_denominator: Denominator = "qmax"

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits", "k_bits", "v_bits"):
            bits = getattr(self, name)
            if bits not in VALID_BITS:
                raise ConfigError(f"{name}={bits} is not supported: use 2..8 or 16 (16 = full precision)")
        if self.symmetric_denominator not in ("qmax", "qmax+0.5"):
            raise ConfigError(
                f"symmetric_denominator={self.symmetric_denominator!r}: use 'qmax' or 'qmax+0.5'"
            )

    @classmethod
    def parse(cls, spec: str, **options: object) -> QuantConfig:
        """Parse ``w<bits>a<bits>[kv<bits> | k<bits>v<bits>]``; KV default to 16 bits."""
        match = _SPEC.match(spec.strip().lower())
        if match is None:
            raise ConfigError(f"cannot parse quant spec {spec!r}: write w<bits>a<bits>[kv<bits>|k<bits>v<bits>], {_EXAMPLES}")
        w, a, kv, k, v = match.groups()
        k_bits = kv or k or FULL_PRECISION_BITS
        v_bits = kv or v or FULL_PRECISION_BITS
        bits = {"w_bits": int(w), "a_bits": int(a), "k_bits": int(k_bits), "v_bits": int(v_bits)}
        for name, value in bits.items():
            if value not in VALID_BITS:
                raise ConfigError(f"quant spec {spec!r}: {name[0]} bits {value} unsupported, use 2..8 or 16 ({_EXAMPLES})")
        return cls(**bits, **options)  # type: ignore[arg-type]

    @property
    def spec(self) -> str:
        kv = f"kv{self.k_bits}" if self.k_bits == self.v_bits else f"k{self.k_bits}v{self.v_bits}"
        return f"w{self.w_bits}a{self.a_bits}{kv}"

    @property
    def is_full_precision(self) -> bool:
        return all(b == FULL_PRECISION_BITS for b in (self.w_bits, self.a_bits, self.k_bits, self.v_bits))
