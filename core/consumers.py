from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .live import live_group


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """`/ws/live/`: the operator's own events, for its logged-in staff only."""

    async def connect(self):
        schema = self.scope.get("schema_name")
        if not schema or schema == "public" or not self.scope.get("is_operator_staff"):
            await self.close(code=4403)
            return
        self.group = live_group(schema)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json({"topic": "hello", "payload": {"operator": schema}})

    async def disconnect(self, code):
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def live_event(self, event):
        await self.send_json({"topic": event["topic"], "payload": event["payload"]})
