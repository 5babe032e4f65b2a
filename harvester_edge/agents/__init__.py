"""The daemon's agents, in the order of the flow (README.md "What the daemon does"): each one module, one job."""

from __future__ import annotations

from harvester_edge.agents.alerter import Alerter
from harvester_edge.agents.base import Agent, AgentContext
from harvester_edge.agents.credentials import Credentials
from harvester_edge.agents.feeder import Feeder
from harvester_edge.agents.fetcher import Fetcher
from harvester_edge.agents.monitor import Monitor
from harvester_edge.agents.paylogs import PayloadLogs
from harvester_edge.agents.persistent import PersistentPilots
from harvester_edge.agents.propagator import Propagator
from harvester_edge.agents.submitter import Submitter
from harvester_edge.agents.sweeper import Sweeper


def agent_classes() -> list[type[Agent]]:
    return [
        Fetcher,
        Submitter,
        Monitor,
        Feeder,
        Propagator,
        Sweeper,
        Credentials,
        Alerter,
        PayloadLogs,
        PersistentPilots,
    ]


def build_agents(ctx: AgentContext) -> list[Agent]:
    return [cls(ctx) for cls in agent_classes()]
