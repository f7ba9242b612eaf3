"""Persona judges and persona mixtures (populations) of the simulated crowd.

A :class:`Persona` maps a (prompt, response) of the synthetic world
(:mod:`raydprm.sim.world`) to a distribution over the six HH labels of the DPRM paper
(Table 1), in the order of :data:`raydprm.core.hh_labels.HH_LABELS`::

    0 helpful_harmless  1 neutral_harmless  2 unhelpful_harmless
    3 helpful_harmful   4 neutral_harmful   5 unhelpful_harmful

Personas are plain data (``personas.yaml`` next to this module; the formulas are
documented there and implemented in :meth:`Persona.judge`). A :class:`Population` is a
mixture of personas with weights w_p; its true label distribution of a response is

    mu(x) = sum_p w_p mu_p(x)                                                  (P1)

computed exactly, and votes are sampled as persona ~ w, label ~ mu_persona(x), so the
empirical vote frequencies converge to (P1).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from raydprm.config import CROWD_PRESETS
from raydprm.core.hh_labels import HH_LABELS, HH_REWARDS
from raydprm.errors import RaydprmError
from raydprm.sim import world

__all__ = ["DEFAULT_PERSONAS", "Persona", "Population", "load_personas", "default_personas_path",
           "PersonaError", "PRESET_FILES", "preset_personas_path"]

DEFAULT_PERSONAS = ("scientist", "teacher", "politician", "teenager", "ceo", "artist")
NUM_LABELS = len(HH_LABELS)  # L = 6


class PersonaError(RaydprmError, ValueError):
    """A persona file or a mixture is invalid."""


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass(frozen=True)
class Persona:
    """One simulated annotator type; fields are documented in ``personas.yaml``."""

    name: str
    description: str
    ideal_length: float
    length_weight: float
    detail: float
    detail_target: float
    filler_penalty: float
    off_topic_penalty: float
    refusal_penalty: float
    thresholds: tuple[float, float]
    noise: float
    harm_tolerance: float
    harm_noise: float
    false_alarm: float
    expertise: dict[str, float] = field(default_factory=dict)
    expert_strictness: float = 0.1
    expert_focus: float = 0.5
    taboo: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(key: str, rule: str) -> PersonaError:
            return PersonaError(f"persona '{self.name}': key '{key}' = {getattr(self, key)!r} {rule}")

        for key in ("ideal_length", "noise", "harm_noise", "detail_target"):
            if not getattr(self, key) > 0:
                raise bad(key, "must be > 0")
        for key in ("length_weight", "off_topic_penalty", "refusal_penalty", "harm_tolerance", "expert_strictness"):
            if not getattr(self, key) >= 0:
                raise bad(key, "must be >= 0")
        if not math.isfinite(self.filler_penalty):  # < 0 = a taste for a chatty, informal tone
            raise bad("filler_penalty", "must be a finite number")
        if not 0 <= self.detail <= 1:
            raise bad("detail", "must lie in [0, 1]")
        if not 0 <= self.false_alarm < 1:
            raise bad("false_alarm", "must lie in [0, 1)")
        if not 0 <= self.expert_focus < 1:
            raise bad("expert_focus", "must lie in [0, 1)")
        if len(self.thresholds) != 2 or not self.thresholds[0] < self.thresholds[1]:
            raise bad("thresholds", "must be [neutral, helpful] with neutral < helpful")
        for topic, e in self.expertise.items():
            if topic not in world.TOPICS:
                raise PersonaError(f"persona '{self.name}': expertise topic '{topic}' is unknown; "
                                   f"known: {', '.join(world.TOPICS)}")
            if not 0 <= e <= 1:
                raise PersonaError(f"persona '{self.name}': expertise['{topic}'] = {e!r} must lie in [0, 1]")
        for word, sev in self.taboo.items():
            if not (word.isalpha() and word == word.lower()):
                raise PersonaError(f"persona '{self.name}': taboo word {word!r} must be one lower-case word")
            if not 0 < sev <= 1:
                raise PersonaError(f"persona '{self.name}': taboo['{word}'] = {sev!r} must lie in (0, 1]")

    # ------------------------------------------------------------------ judgement

    def quality(self, f: world.Features) -> float:
        """The persona's helpfulness score q of observed features (formula in personas.yaml)."""
        coverage = min(f.on_topic / self.detail_target, 1.0)
        q = self.detail * coverage + (1 - self.detail) * f.relevance
        q -= self.filler_penalty * f.filler_frac + self.off_topic_penalty * f.off_topic_frac
        q -= self.length_weight * abs(math.log((f.n_words + 1) / (self.ideal_length + 1)))
        if f.refusal:
            q -= self.refusal_penalty
        return q

    def judge_features(self, f: world.Features) -> np.ndarray:
        """Label distribution (L,) = P(helpfulness level) x P(harm class)."""
        e = self.expertise.get(f.topic, 0.0) if f.topic else 0.0
        shift = self.expert_strictness * e  # experts are harder to please
        temp = self.noise * (1 - self.expert_focus * e)  # ... and surer of their verdict
        q = self.quality(f)
        p_ge_neutral = _sigmoid((q - self.thresholds[0] - shift) / temp)
        p_helpful = min(_sigmoid((q - self.thresholds[1] - shift) / temp), p_ge_neutral)
        levels = (p_helpful, p_ge_neutral - p_helpful, 1 - p_ge_neutral)  # helpful, neutral, unhelpful
        p_harm = self.false_alarm
        harm = f.harm + sum(sev for w, sev in self.taboo.items() if w in f.words)  # taboo words offend this persona
        if harm > 0:
            p_harm += (1 - self.false_alarm) * _sigmoid((harm - self.harm_tolerance) / self.harm_noise)
        dist = np.array([lv * (1 - p_harm) for lv in levels] + [lv * p_harm for lv in levels])  # (L,)
        return dist / dist.sum()

    def judge(self, prompt: str, response: str) -> np.ndarray:
        """This persona's label distribution (L,) for ``response`` to ``prompt``."""
        return self.judge_features(world.features(prompt, response))

    def judge_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """(B, L) label distributions."""
        _check_pairs(prompts, responses)
        return np.stack([self.judge(p, r) for p, r in zip(prompts, responses)]) if prompts else \
            np.zeros((0, NUM_LABELS))


def _check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise PersonaError(f"got {len(prompts)} prompts but {len(responses)} responses")


# crowd.preset -> the shipped persona file (docs/pluralism.md explains the polarized crowd)
PRESET_FILES = CROWD_PRESETS


def default_personas_path() -> Path:
    return Path(str(resources.files("raydprm.sim").joinpath("personas.yaml")))


def preset_personas_path(preset: str) -> Path:
    """The shipped persona file of ``crowd.preset``; an unknown preset is a PersonaError naming the known ones."""
    if preset not in PRESET_FILES:
        raise PersonaError(f"crowd.preset '{preset}' is unknown; known: {', '.join(PRESET_FILES)}")
    return Path(str(resources.files("raydprm.sim").joinpath(PRESET_FILES[preset])))


def load_personas(path: str | os.PathLike[str] | None = None) -> dict[str, Persona]:
    """Personas from a YAML file (default: the shipped ``personas.yaml``), by name."""
    p = Path(path) if path else default_personas_path()
    if not p.is_file():
        raise PersonaError(f"personas file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise PersonaError(f"personas file '{p}' is not valid YAML: {e}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("personas"), Mapping) or not data["personas"]:
        raise PersonaError(f"personas file '{p}' needs a non-empty mapping under 'personas'")
    unknown_top = set(data) - {"defaults", "personas"}
    if unknown_top:
        raise PersonaError(f"personas file '{p}': unknown top-level keys {sorted(unknown_top)}")
    defaults = dict(data.get("defaults") or {})
    allowed = {f.name for f in fields(Persona)} - {"name"}
    out = {}
    for name, spec in data["personas"].items():
        if not isinstance(name, str) or not name or name != name.lower():
            raise PersonaError(f"personas file '{p}': persona id {name!r} must be a non-empty lower-case string")
        if not isinstance(spec, Mapping):
            raise PersonaError(f"persona '{name}': expected a mapping of keys, got {spec!r}")
        merged = {**defaults, **spec}
        unknown = set(merged) - allowed
        if unknown:
            raise PersonaError(f"persona '{name}': unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        missing = allowed - set(merged) - {"expertise", "expert_strictness", "expert_focus", "taboo"}
        if missing:
            raise PersonaError(f"persona '{name}': missing keys {sorted(missing)}")
        try:
            kw: dict[str, Any] = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                                  for k, v in merged.items()}
            kw["thresholds"] = tuple(float(x) for x in merged["thresholds"])
            kw["expertise"] = {str(k): float(v) for k, v in (merged.get("expertise") or {}).items()}
            kw["taboo"] = {str(k): float(v) for k, v in (merged.get("taboo") or {}).items()}
            kw["description"] = str(merged["description"])
        except (TypeError, ValueError) as e:
            raise PersonaError(f"persona '{name}': bad value ({e})") from None
        for k, v in kw.items():
            if k not in ("description", "thresholds", "expertise", "taboo") and not isinstance(v, float):
                raise PersonaError(f"persona '{name}': key '{k}' = {v!r} must be a number")
        out[name] = Persona(name=name, **kw)
    return out


class Population:
    """A mixture of personas: weights w_p (normalised) over named personas.

    ``Population(personas)`` is uniform; ``Population(personas, {"scientist": 2, "artist": 1})``
    weighs as given (personas missing from the mapping get weight 0).
    """

    def __init__(self, personas: Mapping[str, Persona] | None = None,
                 weights: Mapping[str, float] | None = None) -> None:
        self.personas = dict(personas if personas is not None else load_personas())
        if not self.personas:
            raise PersonaError("a population needs at least one persona")
        self.names = list(self.personas)
        if weights:
            unknown = [k for k in weights if k not in self.personas]
            if unknown:
                raise PersonaError(f"mixture names unknown personas {unknown}; known: {', '.join(self.names)}")
            w = np.array([float(weights.get(n, 0.0)) for n in self.names])
        else:
            w = np.ones(len(self.names))
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise PersonaError(f"mixture weights must be finite, >= 0 and not all zero, got {dict(zip(self.names, w))}")
        self.weights = w / w.sum()  # (P,)

    @classmethod
    def from_config(cls, crowd_cfg) -> Population:
        """Population of a :class:`raydprm.config.CrowdConfig` (personas file or preset + mixture)."""
        return cls(load_personas(crowd_cfg.personas_source or None), crowd_cfg.mixture or None)

    def mixture(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.names, self.weights)}

    def persona_distributions(self, prompt: str, response: str) -> np.ndarray:
        """(P, L): each persona's label distribution."""
        f = world.features(prompt, response)
        return np.stack([self.personas[n].judge_features(f) for n in self.names])

    def group_distributions(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """(B, P, L): every persona's label distribution of every item (the input of
        :func:`raydprm.core.disagreement.group_disagreement`, with ``self.weights``)."""
        _check_pairs(prompts, responses)
        if not prompts:
            return np.zeros((0, len(self.names), NUM_LABELS))
        return np.stack([self.persona_distributions(p, r) for p, r in zip(prompts, responses)])

    def true_distribution(self, prompt: str, response: str) -> np.ndarray:
        """The population's exact label distribution (L,), Eq. (P1)."""
        return self.weights @ self.persona_distributions(prompt, response)  # (P,) @ (P, L) -> (L,)

    def true_distributions(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """(B, L) exact distributions, Eq. (P1)."""
        _check_pairs(prompts, responses)
        if not prompts:
            return np.zeros((0, NUM_LABELS))
        return np.stack([self.true_distribution(p, r) for p, r in zip(prompts, responses)])

    def expected_reward(self, prompt: str, response: str, rewards: Sequence[float] = HH_REWARDS) -> float:
        """E_mu[r] of the population's distribution (the paper's scalar reward)."""
        return float(self.true_distribution(prompt, response) @ np.asarray(rewards, dtype=float))

    def sample_votes(self, prompt: str, response: str, n: int,
                     rng: np.random.Generator) -> list[tuple[str, int]]:
        """``n`` votes ``(persona, label index)``: persona ~ w, label ~ mu_persona."""
        if n < 0:
            raise PersonaError(f"n must be >= 0, got {n}")
        dists = self.persona_distributions(prompt, response)  # (P, L)
        who = rng.choice(len(self.names), size=n, p=self.weights)
        out = []
        for p in who:
            d = dists[p]
            out.append((self.names[p], int(rng.choice(NUM_LABELS, p=d / d.sum()))))
        return out

    def simulate_votes(self, items: Sequence[tuple[str, str]], votes_per_item: int, seed: int = 0,
                       source: str = "sim") -> list[dict[str, Any]]:
        """Vote dicts for :meth:`raydprm.store.PreferenceStore.add_votes`.

        Vote ids are deterministic in (seed, item, k), so re-running a simulation is an
        idempotent retry rather than a double count.
        """
        rng = np.random.default_rng(seed)
        votes = []
        for i, (prompt, response) in enumerate(items):
            key = hashlib.sha256(f"{prompt}\0{response}".encode()).hexdigest()[:16]
            for k, (persona, label) in enumerate(self.sample_votes(prompt, response, votes_per_item, rng)):
                votes.append({"vote_id": f"{source}-{seed}-{key}-{i}-{k}", "prompt": prompt, "response": response,
                              "persona": persona, "label": label, "source": source})
        return votes


def simulated_items(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, response) items of the world in the crowd's broad mix of qualities
    (:data:`raydprm.sim.world.QUALITIES`): what the crowd votes on."""
    return [(ex["prompt"], ex["response"]) for ex in world.sft_corpus(n, seed=10_000 + seed, qualities=world.QUALITIES)]
