"""The AsyncAPI document of a service: faststream generates the channels it
consumes; driftloop fills in each message's JSON schema from the event classes
and adds the channels the service publishes to (through its outbox or
directly) and those it reads outside faststream (ingest's micro-batch consumer
of records.submitted), which faststream cannot see."""

from __future__ import annotations

from typing import Any

from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI

from libs.common.events import EVENT_CLASSES, Event

BY_TOPIC: dict[str, type[Event]] = {cls.topic: cls for cls in EVENT_CLASSES.values()}


def document(
    service: str, broker: KafkaBroker, publishes: tuple[type[Event], ...], description: str,
    receives: tuple[type[Event], ...] = (),
) -> dict[str, Any]:  # fmt: skip
    """The AsyncAPI 3.0 document of ``service`` as a JSON-able dict (``receives``: events it consumes
    without a faststream subscriber)."""
    doc: dict[str, Any] = (
        AsyncAPI(broker, title=f"driftloop {service}", description=description).to_specification().to_jsonable()
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    messages = components.setdefault("messages", {})
    for channel in doc.get("channels", {}).values():
        cls = BY_TOPIC.get(_unprefixed(channel["address"]))
        if cls is None:
            continue
        channel["description"] = (cls.__doc__ or "").strip()
        for ref in channel.get("messages", {}).values():
            message = messages.get(ref["$ref"].rsplit("/", 1)[-1])
            if message is not None:
                message["payload"] = {"$ref": f"#/components/schemas/{cls.__name__}"}
                message["title"] = cls.__name__
        schemas[cls.__name__] = _schema(cls, schemas)
    operations = doc.setdefault("operations", {})
    for action, classes in (("send", publishes), ("receive", receives)):
        for cls in classes:
            key = f"{service}:{cls.topic}:{'publish' if action == 'send' else 'subscribe'}"
            doc.setdefault("channels", {})[key] = {
                "address": cls.topic,
                "description": (cls.__doc__ or "").strip(),
                "messages": {cls.__name__: {"$ref": f"#/components/messages/{key}"}},
                "bindings": {"kafka": {"topic": cls.topic, "bindingVersion": "0.4.0"}},
            }
            messages[key] = {"title": cls.__name__, "payload": {"$ref": f"#/components/schemas/{cls.__name__}"}}
            operations[key] = {"action": action, "channel": {"$ref": f"#/channels/{key}"}}
            schemas[cls.__name__] = _schema(cls, schemas)
    return doc


def _schema(cls: type[Event], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = cls.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, nested in schema.pop("$defs", {}).items():
        schemas.setdefault(name, nested)
    return schema


def _unprefixed(address: str) -> str:
    for topic in BY_TOPIC:
        if address.endswith(topic):
            return topic
    return address
