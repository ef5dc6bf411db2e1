"""Registry of tensor types. One module per family:
floats (F32, F16, BF16), legacy (32-element Q4_0, Q4_1, Q5_0, Q5_1, Q8_0),
kquants (256-element Q2_K, Q3_K, Q4_K, Q5_K, Q6_K),
iquants (non-uniform 4-bit table: 32-element IQ4_NL, 256-element IQ4_XS)."""
from __future__ import annotations

from ..errors import QuantError
from .base import QuantType, as_rows

_BY_NAME: dict[str, QuantType] = {}
_BY_ID: dict[int, QuantType] = {}


def register(qt: QuantType) -> QuantType:
    _BY_NAME[qt.name] = qt
    _BY_ID[qt.ggml_id] = qt
    return qt


def get_type(key: "str | int | QuantType") -> QuantType:
    """Look a type up by name ('q4_k' or 'Q4_K'), GGML id, or pass one through."""
    if isinstance(key, QuantType):
        return key
    if isinstance(key, (int,)) and not isinstance(key, bool):
        try:
            return _BY_ID[int(key)]
        except KeyError:
            raise QuantError(f"unknown quant type id {key}") from None
    name = str(key).upper()
    try:
        return _BY_NAME[name]
    except KeyError:
        raise QuantError(f"unknown quant type {key!r} (known: {', '.join(_BY_NAME)})") from None


def find_by_id(type_id: int) -> QuantType | None:
    return _BY_ID.get(int(type_id))


def all_types() -> list[QuantType]:
    return list(_BY_NAME.values())


from . import floats, legacy, kquants, iquants  # noqa: E402,F401  (modules register their types)

__all__ = ["QuantType", "as_rows", "register", "get_type", "find_by_id", "all_types"]
