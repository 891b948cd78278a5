"""Live events for an operator's staff: one channel-layer group per schema, `<schema>.live` on the wire."""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer


def live_group(schema: str) -> str:
    # The design names groups `<schema>:<topic>`; channel-layer group names may not contain ':' so '.' stands in.
    return f"{schema}.live"


def live_event_publish(*, schema: str, topic: str, payload: dict) -> None:
    async_to_sync(get_channel_layer().group_send)(
        live_group(schema), {"type": "live.event", "topic": topic, "payload": payload}
    )
