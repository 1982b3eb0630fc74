"""The plain-data codec of the pipes between the solution's sandbox and the test sandbox (and of the job the
evaluator hands a launcher).

A strict tagged binary encoding of None, bool, int, float (inf / nan included), complex, str, bytes, list,
tuple, dict, set and frozenset, limited in size and depth -- never pickle or eval, so that decoding builds
only builtin plain values and no object of the solution (an `__eq__` that always returns True, say) can
cross. Imports only builtin modules: it runs in a bare `python -I -S` launcher.
"""
import os
import struct

MAX_MESSAGE = 64 << 20
MAX_DEPTH = 100
MAX_NODES = 1 << 20
_U32, _F64 = struct.Struct("<I"), struct.Struct("<d")
_SEQUENCES = {list: b"l", tuple: b"t", set: b"S", frozenset: b"Z"}
_SEQUENCE_OF_TAG = {b"l": list, b"t": tuple, b"S": set, b"Z": frozenset}
PLAIN_TYPES = (int, float, complex, str, bytes, list, tuple, dict, set, frozenset)


class CodecError(Exception):
    pass


def encode(value):
    out = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value, out, depth):
    if depth > MAX_DEPTH:
        raise CodecError("nested too deeply")
    kind = type(value)
    if value is None:
        out.append(b"N")
    elif kind is bool:
        out.append(b"T" if value else b"F")
    elif kind is int:
        raw = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
        out.append(b"i" + _U32.pack(len(raw)) + raw)
    elif kind is float:
        out.append(b"f" + _F64.pack(value))
    elif kind is complex:
        out.append(b"c" + _F64.pack(value.real) + _F64.pack(value.imag))
    elif kind is str:
        raw = value.encode("utf-8", "surrogatepass")
        out.append(b"s" + _U32.pack(len(raw)) + raw)
    elif kind is bytes:
        out.append(b"b" + _U32.pack(len(value)) + value)
    elif kind in _SEQUENCES:
        out.append(_SEQUENCES[kind] + _U32.pack(len(value)))
        for item in value:
            _encode(item, out, depth + 1)
    elif kind is dict:
        out.append(b"d" + _U32.pack(len(value)))
        for key, item in value.items():
            _encode(key, out, depth + 1)
            _encode(item, out, depth + 1)
    elif kind.__module__ == "numpy" and getattr(value, "ndim", None) == 0:  # numpy scalars: their value
        _encode(value.item(), out, depth)
    else:
        # Counter, OrderedDict, namedtuple, IntEnum, numpy.float64...: their plain value (what `==` compares
        # against a plain expected value anyway); whatever such a conversion runs, it runs on the encoding side.
        plain = next((base for base in kind.__mro__[1:] if base in PLAIN_TYPES), None)
        if plain is None:
            raise CodecError(f"a {kind.__name__} is not plain data")
        _encode(plain(value), out, depth + 1)


def decode(data):
    """bytes -> value built only of builtin plain types; CodecError on anything malformed or too big."""
    budget = [MAX_NODES]
    try:
        value, end = _decode(data, 0, 0, budget)
    except (struct.error, UnicodeDecodeError, TypeError, IndexError, ValueError, RecursionError) as err:
        raise CodecError(f"malformed message: {type(err).__name__}") from None
    if end != len(data):
        raise CodecError("trailing bytes")
    return value


def _length(data, at, unit=1):
    (n,) = _U32.unpack_from(data, at)
    if n * unit > len(data) - at - 4:
        raise CodecError("length past the end")
    return n, at + 4


def _decode(data, at, depth, budget):
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise CodecError("too many or too deeply nested values")
    tag, at = data[at : at + 1], at + 1
    if tag == b"N":
        return None, at
    if tag in (b"T", b"F"):
        return tag == b"T", at
    if tag == b"i":
        n, at = _length(data, at)
        return int.from_bytes(data[at : at + n], "little", signed=True), at + n
    if tag == b"f":
        return _F64.unpack_from(data, at)[0], at + 8
    if tag == b"c":
        return complex(_F64.unpack_from(data, at)[0], _F64.unpack_from(data, at + 8)[0]), at + 16
    if tag in (b"s", b"b"):
        n, at = _length(data, at)
        raw = bytes(data[at : at + n])
        return (raw.decode("utf-8", "surrogatepass") if tag == b"s" else raw), at + n
    if tag in _SEQUENCE_OF_TAG:
        n, at = _length(data, at)
        items = []
        for _ in range(n):
            item, at = _decode(data, at, depth + 1, budget)
            items.append(item)
        return _SEQUENCE_OF_TAG[tag](items), at
    if tag == b"d":
        n, at = _length(data, at, 2)
        result = {}
        for _ in range(n):
            key, at = _decode(data, at, depth + 1, budget)
            result[key], at = _decode(data, at, depth + 1, budget)
        return result, at
    raise CodecError(f"unknown tag {tag!r}")


def send(fd, value):
    send_encoded(fd, encode(value))


def send_encoded(fd, data):
    """One length-prefixed message."""
    if len(data) > MAX_MESSAGE:
        raise CodecError("message too large")
    view = memoryview(_U32.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd, n):
    # Raw reads of exactly what the message says: nothing after it is read ahead (the launcher forks the
    # solution's side between the job's two messages, and the second must never be in that process).
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def receive(fd):
    (n,) = _U32.unpack(_read_exactly(fd, 4))
    if n > MAX_MESSAGE:
        raise CodecError("message too large")
    return decode(_read_exactly(fd, n))
