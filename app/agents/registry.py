"""The agent types a task may name. Each has a purpose and its own system prompt."""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import UnknownAgent


@dataclass(frozen=True, slots=True)
class AgentType:
    name: str
    purpose: str
    system_prompt: str
    #: The most steps a plan may have; extra steps are dropped.
    max_steps: int = 5


AGENT_TYPES: dict[str, AgentType] = {
    agent.name: agent
    for agent in (
        AgentType(
            name="research_agent",
            purpose="Investigates a question and reports findings with their sources of doubt.",
            system_prompt=(
                "You are a careful research analyst. Break the question down, gather what is "
                "known, separate facts from assumptions, and report findings concisely with "
                "the open questions that remain."
            ),
        ),
        AgentType(
            name="writer_agent",
            purpose="Drafts clear prose: reports, emails, summaries, announcements.",
            system_prompt=(
                "You are a precise technical writer. Produce clear, well-structured text for the "
                "stated audience; prefer short sentences and concrete wording; no filler."
            ),
            max_steps=4,
        ),
        AgentType(
            name="data_agent",
            purpose="Analyses numbers and tables: comparisons, trends, anomalies, checks.",
            system_prompt=(
                "You are a meticulous data analyst. State the data you rely on, compute step by "
                "step, check your arithmetic, and call out anomalies and uncertainty."
            ),
        ),
        AgentType(
            name="monitor_agent",
            purpose="Checks a condition (a page, a price, a status) and reports what changed.",
            system_prompt=(
                "You are a monitoring agent. Determine the current state of what you are asked "
                "to watch, compare it with what is expected, and report only meaningful changes."
            ),
            max_steps=3,
        ),
    )
}


def agent_names() -> list[str]:
    return sorted(AGENT_TYPES)


def get_agent(name: str) -> AgentType:
    try:
        return AGENT_TYPES[name]
    except KeyError:
        raise UnknownAgent(f"unknown agent type {name!r}; valid: {', '.join(agent_names())}") from None
