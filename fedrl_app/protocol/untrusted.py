"""Helpers for values a client sent: bounded checks and O(1) descriptions for error messages.

A pickle can make one small payload into a value of enormous rendered size (shared references,
integers of thousands of digits), so a decoder never renders an untrusted value whole and never
converts an unbounded integer: it checks bounds first and describes values with `brief`.
"""

from __future__ import annotations

import io
import math

import numpy as np

MAX_INT = 2**53  # the largest count or id accepted (exact in a float64, far beyond any real one)


def finite_number(x: object) -> bool:
    """A finite float, or an int within ±MAX_INT (checked before any conversion: a huge int overflows a float)."""
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return -MAX_INT <= x <= MAX_INT
    return isinstance(x, float) and math.isfinite(x)


def count(x: object) -> bool:
    """An int in [0, MAX_INT] (not a bool)."""
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_INT


def brief(value: object, limit: int = 60) -> str:
    """A description of an untrusted value in O(1): scalars shown (truncated), containers by type and length."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if -MAX_INT <= value <= MAX_INT else f"<int of {value.bit_length()} bits>"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (str, bytes)):
        return repr(value[:limit]) + (f"… ({len(value)} long)" if len(value) > limit else "")
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return f"<{type(value).__name__} of {len(value)} items>"
    return f"<{type(value).__name__}>"


class UntrustedArrayError(ValueError):
    """An Array's bytes are not an .npy payload of an acceptable dtype and size."""


def load_array(array, max_bytes: int) -> np.ndarray:
    """Deserialize an untrusted `flwr.app.Array` with at most `max_bytes` of data.

    Flower's `Array.numpy()` trusts the .npy header: a 100-byte payload whose header claims 2³¹
    floats makes numpy allocate 8 GB before it finds the data missing. Here the header is read and
    checked first (version, dtype without objects, size within `max_bytes` and equal to the data's),
    then the data is copied out: time and memory stay linear in the payload.
    """
    if array.stype != "numpy.ndarray":
        raise UntrustedArrayError(f"serialization type {brief(array.stype)} is not 'numpy.ndarray'")
    data = array.data
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise UntrustedArrayError(f".npy version {version} is not accepted")
    except UntrustedArrayError:
        raise
    except Exception as err:  # a malformed header raises ValueError, SyntaxError, ...
        raise UntrustedArrayError(f"malformed .npy header ({type(err).__name__})") from None
    if dtype.hasobject or dtype.itemsize == 0:
        raise UntrustedArrayError(f"dtype {dtype} is not accepted")
    if not all(isinstance(d, int) and 0 <= d <= MAX_INT for d in shape):
        raise UntrustedArrayError(f"shape {brief(shape)} is not a tuple of sizes")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise UntrustedArrayError(f"the header claims {nbytes} bytes, over the {max_bytes} this array may have")
    offset = fp.tell()
    if len(data) - offset != nbytes:
        raise UntrustedArrayError(f"the header claims {nbytes} bytes of data, the payload has {len(data) - offset}")
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset).copy()
    return flat.reshape(shape, order="F" if fortran else "C")
