"""Request and response bodies of the reward service (pydantic; no Ray, no model).

Limits (items per request, characters per text) come from ``ServeConfig`` and are
baked into the request models by :func:`make_schemas`, so an oversized request is
refused by validation with the offending field named, before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

__all__ = ["Schemas", "make_schemas", "ScoredItem", "GroupScore", "LabelsResponse", "HealthResponse", "VotesResponse"]


class GroupScore(BaseModel):
    """One rater group's label distribution and expected reward (a group-conditioned DPRM)."""

    distribution: dict[str, float]
    expected_reward: float


class ScoredItem(BaseModel):
    """The DPRM's answer for one (prompt, response); a group-conditioned DPRM adds each group's."""

    distribution: dict[str, float]  # label name -> probability (the population: a mixture of the groups)
    expected_reward: float
    reward: float  # the configured scalar readout (expected | cvar | mean_std)
    entropy: float  # uncertainty of the crowd, nats
    groups: dict[str, GroupScore] | None = None  # group -> its distribution and E[r]


class ScoreResponse(BaseModel):
    results: list[ScoredItem]


class LabelsResponse(BaseModel):
    labels: list[str]
    rewards: list[float]
    scalar: str


class HealthResponse(BaseModel):
    status: str
    model: str
    labels: int


class VotesResponse(BaseModel):
    accepted: int
    duplicates: int


@dataclass(frozen=True)
class Schemas:
    """Request models with the configured limits baked in."""

    ScoreItem: type[BaseModel]
    ScoreRequest: type[BaseModel]
    Vote: type[BaseModel]
    VotesRequest: type[BaseModel]


def make_schemas(max_items: int, max_text_chars: int, label_names: tuple[str, ...]) -> Schemas:
    """Build the request models for these limits and labels.

    Strict types: a number where a string is expected is refused (not coerced), unknown
    fields are refused, and a vote's label must be one of ``label_names`` or its index.
    """
    Text = Annotated[StrictStr, Field(min_length=1, max_length=max_text_chars)]
    labels = tuple(label_names)

    class ScoreItem(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: Text
        response: Text

    GroupName = Annotated[StrictStr, Field(min_length=1, max_length=128)]
    Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: Annotated[list[ScoreItem], Field(min_length=1, max_length=max_items)]
        # a group-conditioned DPRM: the population's group weights for this request (default: the served ones)
        weights: Annotated[dict[GroupName, Weight], Field(min_length=1, max_length=1024)] | None = None

    class Vote(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: Text
        response: Text
        label: Any = Field(description=f"label name ({', '.join(labels)}) or index")
        persona: Annotated[StrictStr, Field(min_length=1, max_length=128)] = "anonymous"
        vote_id: Annotated[StrictStr, Field(min_length=1, max_length=256)] | None = None

        @field_validator("label")
        @classmethod
        def _known_label(cls, v):
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ValueError(f"label must be a label name (string) or index (integer), got {type(v).__name__}")
            if isinstance(v, int):
                if not 0 <= v < len(labels):
                    raise ValueError(f"label index {v} is out of range 0..{len(labels) - 1}")
            elif v not in labels:
                raise ValueError(f"unknown label {v!r}; expected one of {', '.join(labels)}")
            return v

        @property
        def label_index(self) -> int:
            return self.label if isinstance(self.label, int) else labels.index(self.label)

    class VotesRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        votes: Annotated[list[Vote], Field(min_length=1, max_length=max_items)]

    return Schemas(ScoreItem, ScoreRequest, Vote, VotesRequest)
