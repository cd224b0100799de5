"""The picluster wire contract, imported by the node publisher and the master service."""

from cluster_protocol.broker_url import BrokerAddress, BrokerUrlError, parse_broker_url
from cluster_protocol.envelope import (
    MAX_MESSAGE_BYTES,
    SCHEMA_VERSION,
    Envelope,
    decode_envelope,
    encode_envelope,
)
from cluster_protocol.errors import EnvelopeError, RejectCause
from cluster_protocol.node_id import (
    MASTER_NODE_ID,
    NodeIdError,
    is_reserved_node_id,
    node_id_from_hostname,
    validate_node_id,
)
from cluster_protocol.schemas import (
    COMMAND_FIELDS,
    MACHINE_DETAILS_FIELDS,
    METRICS_FIELDS,
    REQUIRED_MACHINE_DETAILS,
    validate_payload,
)
from cluster_protocol.topics import (
    COMMAND_LEVEL,
    DEFAULT_PREFIX,
    MessageType,
    ParsedTopic,
    TopicError,
    command_subscription,
    command_topic,
    master_status_topic,
    parse_topic,
    subscription,
    topic_for,
)

__all__ = [
    "COMMAND_FIELDS",
    "COMMAND_LEVEL",
    "DEFAULT_PREFIX",
    "MACHINE_DETAILS_FIELDS",
    "MASTER_NODE_ID",
    "MAX_MESSAGE_BYTES",
    "METRICS_FIELDS",
    "REQUIRED_MACHINE_DETAILS",
    "SCHEMA_VERSION",
    "BrokerAddress",
    "BrokerUrlError",
    "Envelope",
    "EnvelopeError",
    "MessageType",
    "NodeIdError",
    "ParsedTopic",
    "RejectCause",
    "TopicError",
    "command_subscription",
    "command_topic",
    "decode_envelope",
    "encode_envelope",
    "is_reserved_node_id",
    "master_status_topic",
    "node_id_from_hostname",
    "parse_broker_url",
    "parse_topic",
    "subscription",
    "topic_for",
    "validate_node_id",
    "validate_payload",
]
