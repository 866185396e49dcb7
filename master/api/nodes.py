"""Node routes: the compute nodes that have reported in, online or not."""

from __future__ import annotations

from fastapi import APIRouter
from sqlmodel import col, select

from master.api.deps import SessionDep, StateDep
from master.api.errors import documented
from master.models import Node, NodePublic
from master.nodes import to_public

router = APIRouter(prefix="/nodes", tags=["nodes"], responses=documented(401))


@router.get("", response_model=list[NodePublic])
def list_nodes(session: SessionDep, state: StateDep) -> list[NodePublic]:
    """Every node seen, with its queues, resources and online state."""
    nodes = session.exec(select(Node).order_by(col(Node.name)))
    return [to_public(n, state.settings.node_offline_after) for n in nodes]
