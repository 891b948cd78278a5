"""Short message encoding: GSM 03.38 / UCS-2 choice, part splitting, UDH, and decoding of incoming payloads.

Pure module (no Django import): it is on the pricing hot path and is tested and benchmarked alone.

Encoding choice
    A text is sent in the GSM 7-bit default alphabet (``data_coding`` 0x00) when every character is in the
    GSM 03.38 default table or its extension table; otherwise, or when ``force_ucs2`` is set, in UCS-2
    (``data_coding`` 0x08, big-endian UTF-16 on the wire). Extension characters (``^ { } \\ [ ~ ] | €`` and
    form feed) cost two septets each: ESC (0x1B) followed by the extension code.

Part sizes (3GPP TS 23.040, the user data is 140 octets)
    GSM-7: 160 septets in a single message; 153 per part when concatenated (the 6-octet UDH plus one fill
    bit occupies 7 septets). UCS-2: 70 UTF-16 code units single, 67 per part. A part never splits an
    ESC + extension pair, nor a UTF-16 surrogate pair (an emoji): the pair moves whole to the next part, so
    such a part holds 152 septets / 66 code units. Lengths shown to users count GSM septets or UTF-16 units.

Concatenation and the SMPP payload convention
    Parts carry the 8-bit-reference concatenation IE in a UDH: ``05 00 03 <ref> <total> <seq>`` and are
    submitted with ``esm_class`` UDHI (0x40). For GSM-7 the ``short_message`` is *unpacked*: one septet per
    octet, which is what SMSCs expect for ``data_coding`` 0 over SMPP; with a UDH the payload is the six UDH
    octets followed by the unpacked septets, and the SMSC inserts the fill bit when it packs the TPDU (hence
    153 = 160 - 7). smpplib builds its parts byte for byte the same way (a test pins it). An SMSC that wants
    packed GSM-7 over SMPP is the exception and would need a per-upstream option; none is built yet.
    UCS-2 payloads are UDH + UTF-16-BE octets.

Why our own splitting and not ``smpplib.gsm.make_parts``
    smpplib (2.2.4) agrees on the sizes (160/153, 70/67 via 140/134 octets), on counting an extension
    character as two septets and on the UDH layout, but its splitter cuts the encoded bytes blindly: it can end
    a part with a lone ESC (the handset shows a wrong character in both parts) and can cut an emoji's
    surrogate pair in half. Its GSM table also maps the backtick (not in GSM 03.38) to 0x5F, which is ``§``,
    rejects ``§`` itself (forcing UCS-2 and more parts) and lacks form feed. ``sms/tests/test_encoding.py``
    pins each of these findings. So we split and encode ourselves; smpplib stays useful as an SMPP peer.

Decoding
    :func:`decode` turns an incoming ``short_message`` into text for the common ``data_coding`` values, strips a
    UDH when ``esm_class`` has UDHI, and reads GSM-7 either unpacked (the SMPP norm) or packed.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "DATA_CODING_GSM7",
    "DATA_CODING_LATIN1",
    "DATA_CODING_UCS2",
    "ESM_CLASS_UDHI",
    "GSM7_ALPHABET",
    "ConcatInfo",
    "EncodedMessage",
    "MessageTooLong",
    "UnsupportedDataCoding",
    "count_parts",
    "decode",
    "encode",
    "is_gsm7",
    "parse_concat",
    "split_udh",
]

DATA_CODING_GSM7 = 0x00  # "SMSC default alphabet": GSM 03.38 on GSM networks
DATA_CODING_IA5 = 0x01
DATA_CODING_LATIN1 = 0x03
DATA_CODING_UCS2 = 0x08
ESM_CLASS_UDHI = 0x40

GSM7 = "gsm7"
UCS2 = "ucs2"

GSM7_SINGLE = 160
GSM7_PART = 153
UCS2_SINGLE = 70
UCS2_PART = 67
# The 8-bit concatenation reference numbers parts with one octet.
MAX_PARTS = 255

_ESC = 0x1B

# GSM 03.38 default alphabet, code point = index. 0x1B is the escape to the extension table, not a character.
_GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(_GSM_BASIC) == 128  # table integrity, checked once at import

# GSM 03.38 extension table: character -> code sent after ESC.
_GSM_EXTENSION = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}

_GSM_ENCODE_TABLE = {ord(ch): chr(code) for code, ch in enumerate(_GSM_BASIC) if code != _ESC}
_GSM_ENCODE_TABLE.update({ord(ch): "\x1b" + chr(code) for ch, code in _GSM_EXTENSION.items()})
_GSM_DECODE_BASIC = {code: ch for code, ch in enumerate(_GSM_BASIC) if code != _ESC}
_GSM_DECODE_EXTENSION = {code: ch for ch, code in _GSM_EXTENSION.items()}
# For str.translate over octets read as latin-1: octets >= 0x80 are not septets and become U+FFFD.
_GSM_DECODE_TRANSLATE = {code: _GSM_DECODE_BASIC.get(code, "\ufffd") for code in range(256)}

# Every character a GSM-7 message can carry: the default table (less ESC) and the extension table.
GSM7_ALPHABET = "".join(ch for code, ch in enumerate(_GSM_BASIC) if code != _ESC) + "".join(_GSM_EXTENSION)
# A regex search runs in C; it is the fastest way to find the first character that forces UCS-2.
_NON_GSM_RE = re.compile("[^" + re.escape(GSM7_ALPHABET) + "]")
_GSM_EXTENSION_RE = re.compile("[" + re.escape("".join(_GSM_EXTENSION)) + "]")
# Characters outside the Basic Multilingual Plane take a UTF-16 surrogate pair (two code units).
_ASTRAL_RE = re.compile("[\U00010000-\U0010ffff]")

# data_coding -> Python codec for the single-byte and UCS-2 alphabets SMPP 3.4 defines (5.2.19).
_CODECS = {
    DATA_CODING_IA5: "ascii",
    0x02: "latin-1",  # 8-bit binary: latin-1 maps octets to code points one to one, so nothing is lost
    DATA_CODING_LATIN1: "latin-1",
    0x04: "latin-1",
    0x06: "iso8859_5",
    0x07: "iso8859_8",
    DATA_CODING_UCS2: "utf-16-be",  # UTF-16 rather than strict UCS-2: handsets send emoji as surrogate pairs
    0x0A: "iso2022_jp",
    0x0E: "euc_kr",
}


class MessageTooLong(ValueError):
    """The text needs more parts than the 8-bit concatenation reference can number (255)."""


class UnsupportedDataCoding(ValueError):
    """A ``data_coding`` value this module cannot turn into text."""


@dataclass(frozen=True, slots=True)
class EncodedMessage:
    """A text ready for submit_sm: one ``short_message`` payload per part, UDH included when concatenated."""

    encoding: str  # 'gsm7' or 'ucs2'
    data_coding: int  # 0x00 or 0x08
    parts: list[bytes]
    length: int  # GSM septets or UTF-16 code units, as billed and shown to the user
    reference: int | None  # concatenation reference; None for a single-part message

    @property
    def part_count(self) -> int:
        return len(self.parts)

    @property
    def esm_class(self) -> int:
        """The esm_class each part must be submitted with: UDHI when the parts carry a UDH."""
        return ESM_CLASS_UDHI if len(self.parts) > 1 else 0


class ConcatInfo(NamedTuple):
    """Concatenation IE of one received part: which message (reference), how many parts, which one (1-based)."""

    reference: int
    total: int
    sequence: int


def is_gsm7(text: str) -> bool:
    """True when every character is in the GSM 03.38 default alphabet or its extension table."""
    return _NON_GSM_RE.search(text) is None


def count_parts(text: str, *, force_ucs2: bool = False) -> tuple[str, int, int]:
    """Return ``(encoding, parts, length)`` for pricing, without building any payload.

    Gives exactly the part count :func:`encode` produces, escape and surrogate pairs included.
    Raises :class:`MessageTooLong` past 255 parts. An empty text is one (empty) part.
    """
    if not force_ucs2 and _NON_GSM_RE.search(text) is None:
        encoding, pair_re, single, per_part = GSM7, _GSM_EXTENSION_RE, GSM7_SINGLE, GSM7_PART
    else:
        encoding, pair_re, single, per_part = UCS2, _ASTRAL_RE, UCS2_SINGLE, UCS2_PART

    # Fast path: no two-unit characters, so the length is len() and every part is full.
    first_pair = pair_re.search(text)
    if first_pair is None:
        length = len(text)
        parts = 1 if length <= single else -(-length // per_part)
    else:
        pair_starts = _pair_starts(pair_re, text)
        length = len(text) + len(pair_starts)
        parts = len(_part_bounds(length, pair_starts, single, per_part)) - 1
    if parts > MAX_PARTS:
        raise MessageTooLong(f"text needs {parts} parts, at most {MAX_PARTS} can be concatenated")
    return encoding, parts, length


def encode(text: str, *, force_ucs2: bool = False, reference: int | None = None) -> EncodedMessage:
    """Encode ``text`` into submit_sm payloads, splitting and adding a concatenation UDH when needed.

    ``reference`` is the concatenation reference (0-255) shared by the parts; random when not given. It
    should differ between consecutive long messages to the same handset, which a random octet does well
    enough for the handset's reassembly window.
    """
    if reference is not None and not 0 <= reference <= 0xFF:
        raise ValueError(f"reference must be 0-255, got {reference}")

    if not force_ucs2 and _NON_GSM_RE.search(text) is None:
        encoding, data_coding, single, per_part = GSM7, DATA_CODING_GSM7, GSM7_SINGLE, GSM7_PART
        # One septet per octet: the unpacked form SMPP carries for data_coding 0.
        payload = text.translate(_GSM_ENCODE_TABLE).encode("latin-1")
        pair_starts = _pair_starts(_GSM_EXTENSION_RE, text)
        unit_bytes = 1
    else:
        encoding, data_coding, single, per_part = UCS2, DATA_CODING_UCS2, UCS2_SINGLE, UCS2_PART
        payload = text.encode("utf-16-be")
        pair_starts = _pair_starts(_ASTRAL_RE, text)
        unit_bytes = 2

    length = len(payload) // unit_bytes
    bounds = _part_bounds(length, pair_starts, single, per_part)
    total = len(bounds) - 1
    if total > MAX_PARTS:
        raise MessageTooLong(f"text needs {total} parts, at most {MAX_PARTS} can be concatenated")
    if total == 1:
        return EncodedMessage(encoding, data_coding, [payload], length, None)

    if reference is None:
        reference = random.randrange(256)  # a concatenation reference, not a secret
    udh_prefix = bytes((0x05, 0x00, 0x03, reference, total))
    parts = [
        udh_prefix + bytes((seq,)) + payload[start * unit_bytes : end * unit_bytes]
        for seq, (start, end) in enumerate(itertools.pairwise(bounds), start=1)
    ]
    return EncodedMessage(encoding, data_coding, parts, length, reference)


def _pair_starts(pair_re: re.Pattern[str], text: str) -> frozenset[int]:
    """Offsets, in septets or code units, where a two-unit character (ESC pair, surrogate pair) begins."""
    # Each earlier pair shifts the offset by one extra unit.
    return frozenset(match.start() + shift for shift, match in enumerate(pair_re.finditer(text)))


def _part_bounds(length: int, pair_starts: frozenset[int], single: int, per_part: int) -> list[int]:
    """Unit offsets where parts begin and end: ``[0, b1, ..., length]``.

    Greedy filling is optimal here: each part takes as many units as fit, less one when the last unit
    would be the first half of a pair.
    """
    if length <= single:
        return [0, length]
    bounds = [0]
    start = 0
    while length - start > per_part:
        end = start + per_part
        if end - 1 in pair_starts:
            end -= 1
        bounds.append(end)
        start = end
    bounds.append(length)
    return bounds


def split_udh(payload: bytes) -> tuple[bytes, bytes]:
    """Split a UDHI payload into ``(udh, body)``; the UDH includes its length octet."""
    if not payload:
        raise ValueError("short_message is empty but esm_class says it starts with a UDH")
    udh_length = payload[0] + 1
    if udh_length > len(payload):
        raise ValueError(f"UDH length {payload[0]} exceeds the {len(payload)}-octet short_message")
    return payload[:udh_length], payload[udh_length:]


def parse_concat(udh: bytes) -> ConcatInfo | None:
    """Read the concatenation IE (8-bit 0x00 or 16-bit 0x08 reference) from a UDH, or None if absent."""
    if not udh:
        return None
    pos, end = 1, min(len(udh), udh[0] + 1)
    while pos + 2 <= end:
        iei, iel = udh[pos], udh[pos + 1]
        data = udh[pos + 2 : pos + 2 + iel]
        if iei == 0x00 and iel == 3 and len(data) == 3:
            return ConcatInfo(data[0], data[1], data[2])
        if iei == 0x08 and iel == 4 and len(data) == 4:
            return ConcatInfo((data[0] << 8) | data[1], data[2], data[3])
        pos += 2 + iel
    return None


def decode(payload: bytes, data_coding: int, *, esm_class: int = 0, gsm7_packed: bool = False) -> str:
    """Turn a received ``short_message`` into text.

    - ``esm_class`` with UDHI (0x40): the UDH is stripped (use :func:`split_udh` to keep it).
    - 0x00 (and the GSM message-class codings 0xF0-0xF3, 0x10-0x13): GSM 03.38; unpacked septets, one per
      octet, unless ``gsm7_packed``.
    - 0x01 ASCII, 0x03 Latin-1, 0x06 Cyrillic, 0x07 Hebrew, 0x0A ISO-2022-JP, 0x0E KS C 5601.
    - 0x02 / 0x04 8-bit binary: octets as Latin-1 code points, so nothing is lost.
    - 0x08 (and 0x18-0x1B): UCS-2, read as UTF-16-BE so surrogate pairs become emoji.

    Undecodable octets become U+FFFD rather than failing: an MO with one odd octet must still reach its
    keyword handler. An unknown ``data_coding`` raises :class:`UnsupportedDataCoding`.
    """
    udh_octets = 0
    if esm_class & ESM_CLASS_UDHI:
        udh, payload_body = split_udh(payload)
        udh_octets = len(udh)
        if not gsm7_packed:
            payload = payload_body

    alphabet = _alphabet(data_coding)
    if alphabet == GSM7:
        if gsm7_packed:
            # The UDH sits in the packed stream; septets start after it on a septet boundary (fill bits).
            skip = -(-udh_octets * 8 // 7)
            return _gsm_septets_to_text(_unpack_septets(payload)[skip:])
        return _gsm_septets_to_text(payload)
    return payload.decode(alphabet, errors="replace")


def _alphabet(data_coding: int) -> str:
    """'gsm7' or a Python codec name for a data_coding value."""
    if data_coding == DATA_CODING_GSM7:
        return GSM7
    codec = _CODECS.get(data_coding)
    if codec is not None:
        return codec
    # GSM 03.38 DCS groups some SMSCs pass through: 1111xxxx (message class) and 0001xxxx (general coding,
    # uncompressed, with a message class).
    if data_coding & 0xF0 == 0xF0:
        return "latin-1" if data_coding & 0x04 else GSM7
    if data_coding & 0xF0 == 0x10:
        alphabet_bits = (data_coding >> 2) & 0x03
        if alphabet_bits == 0:
            return GSM7
        if alphabet_bits == 1:
            return "latin-1"
        if alphabet_bits == 2:
            return "utf-16-be"
    raise UnsupportedDataCoding(f"data_coding 0x{data_coding:02X} is not supported")


def _unpack_septets(packed: bytes) -> bytes:
    """GSM 03.38 packed septets (LSB first) -> one septet per octet."""
    count = len(packed) * 8 // 7
    number = int.from_bytes(packed, "little")
    septets = bytes((number >> (7 * i)) & 0x7F for i in range(count))
    # Seven spare bits at the end look like a trailing '@' (0x00); 23.038 says they are padding.
    if len(packed) % 7 == 0 and septets and septets[-1] == 0:
        septets = septets[:-1]
    return septets


def _gsm_septets_to_text(septets: bytes) -> str:
    """Unpacked GSM septets -> text, resolving ESC + extension code pairs."""
    chunks = septets.split(b"\x1b")
    out = [_gsm_basic_text(chunks[0])]
    for chunk in chunks[1:]:
        if not chunk:
            continue  # ESC at the end, or ESC ESC: nothing displayable
        code = chunk[0]
        # 23.038: an extension code the receiver does not know is shown as the basic-table character.
        out.append(_GSM_DECODE_EXTENSION.get(code) or _GSM_DECODE_BASIC.get(code, "\ufffd"))
        out.append(_gsm_basic_text(chunk[1:]))
    return "".join(out)


def _gsm_basic_text(septets: bytes) -> str:
    return septets.decode("latin-1").translate(_GSM_DECODE_TRANSLATE)
