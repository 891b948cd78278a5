"""The submitter writes submit_sm itself (sms.smpp_server.submit_sm_pdu): its octets must be smpplib's, the SMPP
implementation this project did not write, for every kind of part it sends; and our parser must read them back."""

import itertools

import pytest
import smpplib.client
import smpplib.smpp

from sms.encoding import encode
from sms.smpp_server import HEADER, parse_submit_sm, submit_sm_pdu

UDH = bytes((5, 0, 3, 0x2A, 2, 1))
SOURCES = [(5, 0, "BENCH"), (1, 1, "4915112345678"), (3, 0, "12345"), (5, 0, "A-very-long-sender-id-cut")]
DESTINATIONS = [(1, 1, "4915112345678"), (0, 1, "0170123"), (1, 1, "1" * 25)]
MESSAGES = [
    (0, 0, encode("Hello €[] {~}").parts[0]),
    (0x40, 0, encode("long " * 60, reference=7).parts[1]),
    (0x40, 8, UDH + "Привет 😀".encode("utf-16-be")),
    (0, 0, b""),
    (0, 0, bytes(range(254))),
]
VALIDITIES = [None, "000001000000000R", "261122093000000+"]


def smpplib_octets(sequence, source, destination, esm_class, data_coding, short_message, validity, registered):
    client = smpplib.client.Client("127.0.0.1", 1, allow_unknown_opt_params=True)
    pdu = smpplib.smpp.make_pdu(
        "submit_sm",
        client=client,
        sequence=sequence,
        source_addr_ton=source[0],
        source_addr_npi=source[1],
        source_addr=source[2],
        dest_addr_ton=destination[0],
        dest_addr_npi=destination[1],
        destination_addr=destination[2],
        esm_class=esm_class,
        data_coding=data_coding,
        registered_delivery=registered,
        validity_period=validity,
        short_message=short_message,
    )
    pdu.sequence = sequence
    return pdu.generate()


@pytest.mark.parametrize(
    ("source", "destination", "message", "validity"),
    list(itertools.product(SOURCES, DESTINATIONS, MESSAGES, VALIDITIES)),
)
def test_submit_sm_is_smpplibs(source, destination, message, validity):
    esm_class, data_coding, short_message = message
    for sequence, registered in ((1, 1), (0x7FFFFFFF, 0)):
        ours = submit_sm_pdu(
            sequence=sequence,
            source=source,
            destination=destination,
            esm_class=esm_class,
            data_coding=data_coding,
            registered_delivery=registered,
            validity_period=validity,
            short_message=short_message,
        )
        assert ours == smpplib_octets(
            sequence, source, destination, esm_class, data_coding, short_message, validity, registered
        )
        length, command_id, status, seq = HEADER.unpack(ours[:16])
        assert (length, command_id, status, seq) == (len(ours), 4, 0, sequence)
        parsed = parse_submit_sm(ours[16:])
        assert parsed.source_addr == source[2][:20].encode()
        assert parsed.destination_addr == destination[2][:20].encode()
        assert (parsed.esm_class, parsed.data_coding, parsed.registered_delivery) == (
            esm_class,
            data_coding,
            registered,
        )
        assert parsed.validity_period == (validity or "").encode()
        assert parsed.short_message == short_message
        assert parsed.tlv_octets == b""


def test_a_short_message_over_254_octets_is_refused():
    with pytest.raises(ValueError, match="255 octets"):
        submit_sm_pdu(
            sequence=1,
            source=(5, 0, "X"),
            destination=(1, 1, "49"),
            esm_class=0,
            data_coding=0,
            registered_delivery=1,
            short_message=bytes(255),
        )
