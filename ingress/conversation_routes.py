"""``GET /v1/conversations/{id}``: the turns of one conversation, oldest first.

Answered from the conversation index the ingress and the projection keep in the store
(:mod:`agentstream.ingress.projection`); members whose record expired are pruned on the way.
A conversation of another tenant, or one with no turn left, is a 404. Requests answered
503 are not turns (they never ran) and are not listed.
"""

from __future__ import annotations

from agentstream.ingress.access import Access
from agentstream.ingress.auth import Principal
from agentstream.ingress.errors import ApiError, documented_errors, json_response
from agentstream.ingress.models import ConversationView, Turn
from fastapi import APIRouter, Depends, Path
from fastapi.responses import Response

__all__ = ["conversations_router"]


def conversations_router(access: Access) -> APIRouter:
    router = APIRouter(tags=["conversations"])

    @router.get(
        "/v1/conversations/{conversation_id}",
        response_model=ConversationView,
        summary="The turns of a conversation",
        responses=documented_errors(401, 404, 422, 429, 503),
    )
    async def get_conversation(
        conversation_id: str = Path(min_length=1, max_length=200),
        who: Principal = Depends(access.caller),
    ) -> Response:
        records = await access.repo.conversation(who.tenant, conversation_id)
        if not records:
            raise ApiError(404, "no such conversation")
        view = ConversationView(
            conversation_id=conversation_id, turns=[Turn.of(r) for r in records]
        )
        return json_response(view)

    return router
