"""A support team of declared agents: ``agentstream up --app examples.support``.

- ``triage`` (the default) greets the customer, hands billing matters to ``billing`` and
  asks ``math`` (an agent used as a tool) to do arithmetic.
- ``billing`` looks invoices up with its own tool and may hand back to ``triage``.
- ``math`` does arithmetic with the built-in calculator; ``quote`` answers in a structured
  output type; every agent refuses messages that carry a card number (an input guardrail).

Each agent is its own consumer group on its own input topic (``agent.<name>``), so each
scales on its own: ``agentstream worker agent --agent billing``. With the offline model
(no key needed) the choices are made by matching the message against the agents'
descriptions; with a real model, by the model.
"""

from __future__ import annotations

import re
from typing import Literal

from agentstream.agents import Agent, App, RunContext
from pydantic import BaseModel, Field

app = App("support", default="triage")

_CARD = re.compile(r"\b(?:\d[ -]?){13,19}\b")


def no_card_numbers(context: RunContext, text: str) -> str | None:
    """Card numbers do not belong in a chat: refuse the message rather than store it."""
    if _CARD.search(text):
        return "the message contains what looks like a card number"
    return None


class Invoice(BaseModel):
    number: str = Field(pattern=r"INV-\d{4}", description="The invoice number, e.g. INV-1042.")


_INVOICES = {
    "INV-1042": {"amount_eur": 49.0, "status": "paid twice", "refund": "issued, 3-5 days"},
    "INV-2001": {"amount_eur": 120.0, "status": "open", "refund": "none"},
}


@app.tool(description="Look up an invoice by its number: amount, status, refunds.")
async def lookup_invoice(args: Invoice) -> dict[str, object]:
    found = _INVOICES.get(args.number)
    if found is None:
        return {"number": args.number, "found": False}
    return {"number": args.number, "found": True, **found}


class Quote(BaseModel):
    plan: Literal["basic", "pro", "enterprise"]
    seats: int = Field(ge=1)
    summary: str


math = app.agent(
    "math",
    "You do arithmetic with the calculator and answer with the result only.",
    description="Does arithmetic and calculations: sums, products, percentages.",
    tools=["calculator"],
    input_guardrails=[no_card_numbers],
)
billing = Agent(
    "billing",
    "You answer billing questions. Look invoices up before you answer.",
    description="Billing: invoices, refunds, charges and payments.",
    tools=[lookup_invoice],
    input_guardrails=[no_card_numbers],
)
quote = app.agent(
    "quote",
    "You prepare price quotes for plans.",
    description="Price quotes for plans and seats: basic, pro, enterprise.",
    tools=[],
    output_type=Quote,
)
triage = app.agent(
    "triage",
    "You greet customers, answer general questions and route them: billing matters to "
    "the billing agent, arithmetic to the math agent.",
    description="Greets customers and answers general questions: time, units, memory.",
    tools=["current_time", "convert_units", "remember", "recall"],
    handoffs=[billing, quote],
    agent_tools=[math],
    input_guardrails=[no_card_numbers],
)
billing.handoffs = ("triage",)
app.add(billing)
