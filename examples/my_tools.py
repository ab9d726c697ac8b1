"""An example tools module: `AGENTSTREAM_TOOLS_MODULE=examples.my_tools agentstream up`."""

from __future__ import annotations

from agentstream.agents import ToolRegistry
from pydantic import BaseModel, Field


class Order(BaseModel):
    order_id: str = Field(description="The order number, e.g. A-1001.")


def register(registry: ToolRegistry) -> None:
    @registry.tool(description="Look up the shipping status of an order.", timeout_s=2.0)
    async def order_status(args: Order) -> dict[str, str]:
        return {"order_id": args.order_id, "status": "shipped"}
