"""GSM 03.38 / UCS-2 encoding, part splitting and decoding; and where smpplib's splitter agrees or not."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from smpplib import consts as smpplib_consts
from smpplib import gsm as smpplib_gsm

from sms.encoding import (
    DATA_CODING_GSM7,
    DATA_CODING_UCS2,
    ESM_CLASS_UDHI,
    GSM7_ALPHABET,
    ConcatInfo,
    MessageTooLong,
    UnsupportedDataCoding,
    count_parts,
    decode,
    encode,
    is_gsm7,
    parse_concat,
    split_udh,
)

UDH_LENGTH = 6


def body(part: bytes) -> bytes:
    """The user data of a concatenated part, without its UDH."""
    return split_udh(part)[1]


def pack_septets(septets: bytes, fill_bits: int = 0) -> bytes:
    """GSM 03.38 packing (LSB first), for building packed test payloads."""
    number = 0
    for index, septet in enumerate(septets):
        number |= septet << (fill_bits + 7 * index)
    bit_count = fill_bits + 7 * len(septets)
    return number.to_bytes(-(-bit_count // 8), "little")


# --- alphabet choice and the GSM table ---


def test_plain_ascii_text_is_gsm7_one_septet_per_character():
    message = encode("Your code is 1234")

    assert (message.encoding, message.data_coding, message.esm_class) == ("gsm7", DATA_CODING_GSM7, 0)
    assert message.parts == [b"Your code is 1234"]
    assert (message.part_count, message.length, message.reference) == (1, 17, None)


@pytest.mark.parametrize(
    ("character", "septets"),
    [
        ("@", b"\x00"),
        ("£", b"\x01"),
        ("\n", b"\x0a"),
        ("Δ", b"\x10"),
        ("_", b"\x11"),
        ("¤", b"\x24"),
        ("¡", b"\x40"),
        ("§", b"\x5f"),
        ("¿", b"\x60"),
        ("à", b"\x7f"),
        ("\f", b"\x1b\x0a"),
        ("^", b"\x1b\x14"),
        ("{", b"\x1b\x28"),
        ("}", b"\x1b\x29"),
        ("\\", b"\x1b\x2f"),
        ("[", b"\x1b\x3c"),
        ("~", b"\x1b\x3d"),
        ("]", b"\x1b\x3e"),
        ("|", b"\x1b\x40"),
        ("€", b"\x1b\x65"),
    ],
)
def test_gsm_table_and_extension_table_codes(character, septets):
    assert encode(character).parts == [septets]


@pytest.mark.parametrize("text", ["`", "ç", "Привет", "你好", "😀", "\x1b", "\t"])
def test_characters_outside_gsm_03_38_force_ucs2(text):
    message = encode(text)

    assert (message.encoding, message.data_coding) == ("ucs2", DATA_CODING_UCS2)
    assert message.parts == [text.encode("utf-16-be")]
    assert not is_gsm7(text)


def test_force_ucs2_sends_gsm_text_as_ucs2():
    message = encode("hello", force_ucs2=True)

    assert message.encoding == "ucs2"
    assert message.parts == ["hello".encode("utf-16-be")]
    assert count_parts("hello", force_ucs2=True) == ("ucs2", 1, 5)


def test_extension_characters_count_two_septets():
    assert encode("{x}").length == 5
    assert count_parts("€10") == ("gsm7", 1, 4)


def test_empty_text_is_one_empty_part():
    assert encode("").parts == [b""]
    assert count_parts("") == ("gsm7", 1, 0)


# --- part boundaries ---


@pytest.mark.parametrize(
    ("text", "parts", "length"),
    [
        ("a" * 160, 1, 160),
        ("a" * 161, 2, 161),
        ("a" * 306, 2, 306),
        ("a" * 307, 3, 307),
        ("€" * 80, 1, 160),
        ("€" * 80 + "a", 2, 161),
        ("a" * 152 + "€" + "a" * 7, 2, 161),  # the pair at 152-153 would straddle: it moves
        ("ж" * 70, 1, 70),
        ("ж" * 71, 2, 71),
        ("ж" * 134, 2, 134),
        ("ж" * 135, 3, 135),
        ("😀" * 35, 1, 70),
        ("😀" * 35 + "a", 2, 71),
        ("😀" * 67, 3, 134),  # 33 pairs (66 units) per part, never 33.5
    ],
)
def test_part_counts_at_the_boundaries(text, parts, length):
    message = encode(text)

    assert (message.part_count, message.length) == (parts, length)
    assert count_parts(text) == (message.encoding, parts, length)


def test_concatenated_gsm_parts_hold_153_septets_after_the_udh():
    message = encode("a" * 400, reference=0x42)

    assert message.esm_class == ESM_CLASS_UDHI
    assert message.reference == 0x42
    assert [len(part) for part in message.parts] == [UDH_LENGTH + 153, UDH_LENGTH + 153, UDH_LENGTH + 94]
    assert [part[:UDH_LENGTH] for part in message.parts] == [
        b"\x05\x00\x03\x42\x03\x01",
        b"\x05\x00\x03\x42\x03\x02",
        b"\x05\x00\x03\x42\x03\x03",
    ]


def test_a_part_never_ends_with_a_lone_escape():
    message = encode("a" * 152 + "€" + "b" * 10, reference=1)

    first, second = (body(part) for part in message.parts)
    assert first == b"a" * 152
    assert second == b"\x1b\x65" + b"b" * 10


def test_an_extension_character_that_fits_stays_in_the_part():
    message = encode("a" * 151 + "€" + "b" * 10, reference=1)

    assert body(message.parts[0]) == b"a" * 151 + b"\x1b\x65"


def test_a_part_never_splits_a_surrogate_pair():
    message = encode("a" * 66 + "😀" + "b" * 10, reference=1)

    first, second = (body(part) for part in message.parts)
    assert first.decode("utf-16-be") == "a" * 66  # 66 code units: the emoji would not fit in 67
    assert second.decode("utf-16-be") == "😀" + "b" * 10


def test_concatenated_ucs2_parts_hold_67_code_units():
    message = encode("ж" * 140, reference=9)

    assert [len(body(part)) for part in message.parts] == [134, 134, 12]
    assert all(part[:5] == b"\x05\x00\x03\x09\x03" for part in message.parts)


def test_random_reference_is_one_octet():
    message = encode("a" * 200)

    assert 0 <= message.reference <= 255
    assert all(part[3] == message.reference for part in message.parts)


def test_reference_out_of_range_is_refused():
    with pytest.raises(ValueError, match="reference"):
        encode("a" * 200, reference=256)


def test_255_parts_is_the_limit():
    assert count_parts("a" * 153 * 255) == ("gsm7", 255, 153 * 255)
    assert encode("a" * 153 * 255).part_count == 255

    with pytest.raises(MessageTooLong):
        encode("a" * (153 * 255 + 1))
    with pytest.raises(MessageTooLong):
        count_parts("a" * (153 * 255 + 1))


@given(st.text(alphabet=GSM7_ALPHABET, max_size=700))
def test_gsm_parts_reassemble_to_the_text_and_never_split_an_escape_pair(text):
    message = encode(text, reference=7)

    bodies = [body(part) for part in message.parts] if message.part_count > 1 else message.parts
    assert "".join(decode(chunk, DATA_CODING_GSM7) for chunk in bodies) == text
    assert all(len(chunk) <= (153 if message.part_count > 1 else 160) for chunk in bodies)
    assert not any(chunk.endswith(b"\x1b") for chunk in bodies)
    assert count_parts(text) == ("gsm7", message.part_count, message.length)


@given(st.text(alphabet=st.sampled_from("aж€😀𝄞✓ "), max_size=400))
def test_ucs2_parts_reassemble_to_the_text_and_never_split_a_surrogate_pair(text):
    message = encode(text, force_ucs2=True, reference=7)

    bodies = [body(part) for part in message.parts] if message.part_count > 1 else message.parts
    assert "".join(chunk.decode("utf-16-be") for chunk in bodies) == text  # strict: a split pair would raise
    assert all(len(chunk) <= (134 if message.part_count > 1 else 140) for chunk in bodies)
    assert count_parts(text, force_ucs2=True) == ("ucs2", message.part_count, message.length)


@given(st.text(max_size=500))
def test_count_parts_always_agrees_with_encode(text):
    message = encode(text)

    assert count_parts(text) == (message.encoding, message.part_count, message.length)


# --- decoding incoming messages ---


def test_decode_unpacked_gsm_with_extension_characters():
    assert decode(encode("Price: 5€ [net] {ok} ~ ^").parts[0], 0x00) == "Price: 5€ [net] {ok} ~ ^"


def test_decode_packed_gsm():
    # "hellohello", the 23.038 packing example.
    assert decode(bytes.fromhex("E8329BFD4697D9EC37"), 0x00, gsm7_packed=True) == "hellohello"


def test_decode_packed_gsm_drops_seven_padding_bits_that_look_like_at_sign():
    assert decode(pack_septets(b"1234567"), 0x00, gsm7_packed=True) == "1234567"


def test_decode_packed_gsm_after_a_udh_skips_the_fill_bits():
    udh = b"\x05\x00\x03\x01\x02\x01"
    septets = encode("STOP now").parts[0]
    # Six UDH octets are 48 bits; one fill bit brings the septets onto a septet boundary.
    packed_text = pack_septets(b"\x00" * 7 + septets)[len(udh) :]

    assert decode(udh + packed_text, 0x00, esm_class=ESM_CLASS_UDHI, gsm7_packed=True) == "STOP now"


def test_decode_strips_the_udh_when_esm_class_has_udhi():
    part = encode("ж" * 100, reference=3).parts[1]

    assert decode(part, DATA_CODING_UCS2, esm_class=ESM_CLASS_UDHI) == "ж" * 33
    assert parse_concat(split_udh(part)[0]) == ConcatInfo(reference=3, total=2, sequence=2)


@pytest.mark.parametrize(
    ("payload", "data_coding", "text"),
    [
        ("Stop 😀".encode("utf-16-be"), 0x08, "Stop 😀"),
        ("Café".encode("latin-1"), 0x03, "Café"),
        (b"STOP", 0x01, "STOP"),
        ("Стоп".encode("iso8859_5"), 0x06, "Стоп"),
        (b"STOP", 0xF0, "STOP"),  # GSM DCS: default alphabet, message class 0
        (b"STOP", 0xF4, "STOP"),  # GSM DCS: 8-bit data, class 0
        ("Стоп".encode("utf-16-be"), 0x18, "Стоп"),  # GSM DCS general group: UCS-2, class 0
        (b"\x00\x02", 0x04, "\x00\x02"),  # binary: octets kept as code points
    ],
)
def test_decode_data_codings(payload, data_coding, text):
    assert decode(payload, data_coding) == text


def test_decode_unknown_data_coding_names_it():
    with pytest.raises(UnsupportedDataCoding, match="0x09"):
        decode(b"x", 0x09)


def test_decode_tolerates_octets_that_are_not_septets_and_unknown_escapes():
    assert decode(b"A\xc9B", 0x00) == "A\ufffdB"
    # 23.038: an unknown extension code shows the basic-table character.
    assert decode(b"\x1bA", 0x00) == "A"
    assert decode(b"A\x1b", 0x00) == "A"


def test_decode_odd_ucs2_octet_becomes_replacement_character():
    assert decode(b"\x00A\x00", 0x08) == "A\ufffd"


def test_parse_concat_reads_16_bit_references_and_skips_other_elements():
    udh = b"\x0a" + b"\x24\x01\x01" + b"\x08\x04\x12\x34\x05\x02"

    assert parse_concat(udh) == ConcatInfo(reference=0x1234, total=5, sequence=2)
    assert parse_concat(b"\x03\x24\x01\x01") is None
    assert parse_concat(b"") is None


def test_split_udh_refuses_a_udh_longer_than_the_message():
    with pytest.raises(ValueError, match="UDH length"):
        split_udh(b"\x09\x00\x03")


# --- smpplib 2.2.4 at the same boundaries: where it agrees, and where it is wrong ---


def smpplib_parts(text):
    return smpplib_gsm.make_parts(text)


def test_smpplib_agrees_on_single_message_sizes():
    assert len(smpplib_parts("a" * 160)[0]) == 1
    assert len(smpplib_parts("a" * 161)[0]) == 2
    assert len(smpplib_parts("ж" * 70)[0]) == 1
    assert len(smpplib_parts("ж" * 71)[0]) == 2


def test_smpplib_agrees_that_extension_characters_take_two_septets():
    assert len(smpplib_parts("€" * 80)[0]) == 1
    assert len(smpplib_parts("€" * 80 + "a")[0]) == 2


def test_smpplib_agrees_on_part_sizes_and_the_udh_layout(monkeypatch):
    monkeypatch.setattr(smpplib_gsm.random, "randint", lambda low, high: 0x42)

    parts, data_coding, esm_class = smpplib_parts("a" * 400)

    assert (smpplib_consts.SEVENBIT_PART_SIZE, smpplib_consts.UCS2_PART_SIZE) == (153, 134)
    assert (data_coding, esm_class) == (DATA_CODING_GSM7, ESM_CLASS_UDHI)
    assert parts == encode("a" * 400, reference=0x42).parts


def test_smpplib_splits_an_escape_pair_across_parts_and_we_do_not():
    text = "a" * 152 + "€" + "b" * 10

    smpplib_first = smpplib_parts(text)[0][0]
    ours_first = encode(text, reference=1).parts[0]

    assert smpplib_first.endswith(b"\x1b")  # smpplib: lone ESC, the handset shows garbage in both parts
    assert not ours_first.endswith(b"\x1b")


def test_smpplib_splits_a_surrogate_pair_across_parts_and_we_do_not():
    text = "a" * 66 + "😀" + "b" * 10

    smpplib_first = body(smpplib_parts(text)[0][0])
    ours_first = body(encode(text, reference=1).parts[0])

    with pytest.raises(UnicodeDecodeError):
        smpplib_first.decode("utf-16-be")  # ends with half an emoji
    assert ours_first.decode("utf-16-be") == "a" * 66


def test_smpplib_sends_backtick_as_section_sign_and_we_use_ucs2():
    assert smpplib_gsm.gsm_encode("`") == b"\x5f"  # 0x5F is '§' in GSM 03.38: the handset shows '§'
    assert decode(b"\x5f", DATA_CODING_GSM7) == "§"
    assert encode("`").encoding == "ucs2"


def test_smpplib_refuses_section_sign_and_we_keep_it_gsm():
    assert smpplib_parts("§")[1] == smpplib_consts.SMPP_ENCODING_ISO10646
    assert encode("§").parts == [b"\x5f"]


def test_smpplib_lacks_form_feed_and_we_keep_it_gsm():
    assert smpplib_parts("page\f2")[1] == smpplib_consts.SMPP_ENCODING_ISO10646
    assert encode("page\f2").encoding == "gsm7"
