"""The daemon's agents, in the order of the flow (design.md): each one module, one job."""
from __future__ import annotations

from harvester_edge.agents.base import Agent, AgentContext


def build_agents(ctx: AgentContext) -> list[Agent]:
    return [cls(ctx) for cls in agent_classes()]


def agent_classes() -> list[type[Agent]]:
    return []
