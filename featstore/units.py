"""Byte sizes: parse what users type (decimal and binary units), print sizes one way everywhere.

>>> parse_bytes("4MB"), parse_bytes("4MiB"), format_bytes(4 * 2**20)
(4000000, 4194304, '4.19 MB (4 MiB)')
"""

from __future__ import annotations

import re

from featstore.errors import ConfigError

_UNITS = {
    "": 1,
    "b": 1,
    "byte": 1,
    "bytes": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
MAX_BYTES = 2**63 - 1  # a size is stored in signed 64 bits (an HDF5 attribute, a run's JSON); 2**63 is refused
_DECIMAL = ("bytes", "kB", "MB", "GB", "TB")
_BINARY = ("bytes", "KiB", "MiB", "GiB", "TiB")


def parse_bytes(text: str | int, option: str = "--memory-budget") -> int:
    """``"512MB"`` -> 512000000, ``"4MiB"`` -> 4194304; plain numbers are bytes; units are case-insensitive.

    >>> parse_bytes("4MB"), parse_bytes("4MiB"), parse_bytes(1000)
    (4000000, 4194304, 1000)
    """
    if isinstance(text, bool):  # True was taken as 1 byte (attack 54 #3)
        raise ConfigError(f"{option} {text!r} is not a size; give bytes (an int) or e.g. 512MB, 2GB or 1.5GiB")
    if isinstance(text, int):  # checked as a typed size is: 2**63 fitted everything, then was refused unrecorded
        if not 0 <= text <= MAX_BYTES:
            raise ConfigError(_too_large(option, text) if text > 0 else f"{option} {text!r} must be more than 0 bytes")
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(
            f"{option} {text!r} is not a size; write e.g. 512MB, 2GB or 1.5GiB "
            f"(kB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB powers of 1024)"
        )
    number, unit = m.group(1), _UNITS[m.group(2).lower()]
    exact = number.isdigit() and len(number) < 40  # whole numbers exactly, to the last byte (5000 digits: inf below)
    size = int(number) * unit if exact else float(number) * unit
    if not size <= MAX_BYTES:  # 400 digits are a float's inf: int() of it was an OverflowError traceback
        raise ConfigError(_too_large(option, text))
    if 0 < size < 1 or (
        unit == 1 and isinstance(size, float) and not size.is_integer()
    ):  # "0.5" was "must be positive"
        raise ConfigError(
            f"{option} {text!r} is not a whole number of bytes; give a unit (e.g. 512MB, 0.5GB) or a whole number of "
            f"bytes"
        )
    return int(size)


def _too_large(option: str, text) -> str:
    """The line for a size over :data:`MAX_BYTES`, naming a bound the parser accepts, in units it accepts."""
    return (
        f"{option} {text!r} is larger than any memory or disk; give at most {MAX_BYTES} bytes "
        f"(9.2 million TB, e.g. 1000000TB)"
    )


def format_bytes(n: int) -> str:
    """A byte count in decimal and, when it differs, binary units: the one way featstore prints sizes.

    >>> format_bytes(4 * 2**20), format_bytes(2 * 10**9), format_bytes(1000)
    ('4.19 MB (4 MiB)', '2 GB (1.86 GiB)', '1 kB (1000 bytes)')
    """
    if n < 1000:
        return f"{n} bytes"
    decimal, binary = _scaled(n, 1000, _DECIMAL), _scaled(n, 1024, _BINARY)
    return decimal if decimal == binary else f"{decimal} ({binary})"


def _scaled(n: int, base: int, names: tuple[str, ...]) -> str:
    """n in the largest unit of ``names`` that keeps the number at least 1, with 3 significant digits."""
    value, i = float(n), 0
    while i < len(names) - 1 and float(_digits(value)) >= base:
        value, i = value / base, i + 1
    return f"{_digits(value)} {names[i]}"


def _digits(v: float) -> str:
    """3 significant digits without trailing zeros or exponent: 4.19, 38.1, 488."""
    text = f"{v:.0f}" if v >= 99.95 else f"{v:.1f}" if v >= 9.995 else f"{v:.2f}"
    return text.rstrip("0").rstrip(".") if "." in text else text
