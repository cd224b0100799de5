"""Which nodes a request is for (names, a tag, or all), and whole numbers, checked alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from cluster_protocol.node_id import NODE_ID_PATTERN
from master_service.control.selection import select_nodes


def whole(value: Any) -> Any:
    """Let `3.0` through as 3: JSON Schema counts a number without a fraction as an integer."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


# Strict: a boolean is not a number and "5" is not 5, but 3.0 is the integer 3. The bound
# sits before the validator, or pydantic cannot put it in the schema as `minimum`.
Positive = Annotated[int, Field(ge=1), BeforeValidator(whole)]

TAG_PATTERN: Final = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
MAX_FAN_OUT_NODES: Final = 1000


def one_selection_schema(schema: dict[str, Any]) -> None:
    """Say in the schema that exactly one of nodes, tag, all is given, and none is null."""
    schema["oneOf"] = [{"required": ["nodes"]}, {"required": ["tag"]}, {"required": ["all"]}]
    for name in ("nodes", "tag", "all"):
        schema["properties"][name].pop("default", None)  # a null default would be a lie


class NodeSelection(BaseModel):
    """The nodes a request is for: by names, a tag, or all (exactly one of them)."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra=one_selection_schema,
    )

    nodes: list[Annotated[str, Field(pattern=NODE_ID_PATTERN.pattern)]] = Field(
        default=None,  # type: ignore[arg-type]  # absent, never null: see `not_null`
        min_length=1,
        max_length=MAX_FAN_OUT_NODES,
        description="these nodes, by id",
    )
    tag: str = Field(
        default=None,  # type: ignore[assignment]
        pattern=TAG_PATTERN,
        description="the nodes that carry this tag",
    )
    all: Literal[True] = Field(
        default=None,  # type: ignore[arg-type]
        description="every node the master knows",
    )

    @field_validator("nodes", "tag", "all", mode="before")
    @classmethod
    def not_null(cls, value: Any) -> Any:
        """An explicit null is refused, as the schema says; leave the field out instead."""
        if value is None:
            raise ValueError("leave the field out rather than null")
        return value

    @model_validator(mode="after")
    def one_selection(self) -> NodeSelection:
        """Exactly one of nodes, tag, all."""
        given = [name for name in ("nodes", "tag", "all") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of nodes, tag, all (got {given or 'none'})")
        return self

    def chosen(self, views: Iterable[Mapping[str, Any]]) -> list[str]:
        """The node ids this selection picks from the master's node views."""
        return select_nodes(views, nodes=self.nodes, tag=self.tag, everyone=self.all is True)
