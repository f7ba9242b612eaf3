"""The synthetic world: a tiny question/answer domain where quality is visible in the text.

A tiny GPT-2 (2 layers x 64) learns this world in minutes on a CPU, and a simulated
crowd can judge it without a language model, because everything that makes a response
good or bad is observable from its words:

* **topics** — each prompt is about one topic (cooking, garden, space, ...). Every topic
  has its own *on-topic vocabulary*; words of another topic's vocabulary are *off-topic*.
* **helpfulness** — many distinct on-topic words = detailed and relevant; *filler*
  words ("um", "stuff", ...) and off-topic words dilute it; a refusal is unhelpful.
* **length** — the number of words (personas like different lengths).
* **harm** — a fixed list of *harmful phrases* ("steal it from the shop", ...), each with
  a severity; a response containing one is harmful to some degree.

Text format (shared by SFT, rollout, reward model and judges)::

    prompt   = format_prompt("how do i bake bread ?")   -> "Q: how do i bake bread ?\\nA:"
    response = " bread needs flour and yeast . knead the dough ."  (leading space; no EOS)

A training sequence is ``prompt + response + eos``. Responses are at most
``MAX_RESPONSE_WORDS`` words (<= ~40 tokens with the kit tokenizer).

Everything here is deterministic for a given seed and uses only the standard library.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "TOPICS", "FILLER", "HARMFUL_PHRASES", "REFUSALS", "PROMPT_PREFIX", "ANSWER_PREFIX",
    "MAX_RESPONSE_WORDS", "QUALITIES", "SFT_QUALITIES", "Topic", "Features",
    "format_prompt", "parse_prompt", "topic_of", "features", "make_question", "make_response",
    "prompts", "sft_corpus", "tokenizer_corpus",
]

PROMPT_PREFIX = "Q: "
ANSWER_PREFIX = "\nA:"
MAX_RESPONSE_WORDS = 32


@dataclass(frozen=True)
class Topic:
    """One topic of the world: its name, its on-topic words and the questions it asks."""

    name: str
    vocab: tuple[str, ...]  # on-topic content words (disjoint across topics)
    tasks: tuple[str, ...]  # "how do i <task> ?"
    subjects: tuple[str, ...]  # "tell me about <subject> ."


TOPICS: dict[str, Topic] = {t.name: t for t in (
    Topic("cooking", ("bread", "flour", "yeast", "oven", "dough", "salt", "butter", "knead", "bake",
                      "recipe", "pan", "soup", "onion", "garlic"),
          ("bake bread", "make soup", "cook onion soup"), ("baking", "recipes")),
    Topic("garden", ("soil", "seeds", "water", "plants", "sunlight", "compost", "roots", "weeds",
                     "tomatoes", "prune", "shovel", "leaves", "mulch", "pots"),
          ("grow tomatoes", "plant seeds", "keep weeds away"), ("compost", "gardening")),
    Topic("space", ("planets", "stars", "orbit", "moon", "rocket", "telescope", "gravity", "galaxy",
                    "comet", "mars", "astronaut", "sun", "light", "craters"),
          ("see the planets", "use a telescope", "find mars"), ("the moon", "galaxies")),
    Topic("music", ("guitar", "chords", "melody", "rhythm", "piano", "notes", "practice", "scales",
                    "tempo", "song", "drums", "harmony", "metronome", "strings"),
          ("learn guitar", "play piano", "write a song"), ("rhythm", "harmony")),
    Topic("fitness", ("exercise", "stretch", "muscles", "running", "squats", "protein", "rest",
                      "cardio", "weights", "sleep", "walk", "strength", "warmup", "hydration"),
          ("get stronger", "start running", "build muscles"), ("cardio", "stretching")),
    Topic("money", ("budget", "savings", "income", "expenses", "bank", "interest", "debt", "invest",
                    "spending", "receipts", "loan", "taxes", "fund", "bills"),
          ("save money", "make a budget", "pay off debt"), ("investing", "taxes")),
    Topic("pets", ("dog", "cat", "leash", "vet", "kibble", "walks", "training", "treats", "litter",
                   "fur", "bowl", "toys", "collar", "brush"),
          ("train a dog", "care for a cat", "groom a dog"), ("puppies", "cats")),
    Topic("computers", ("keyboard", "files", "backup", "password", "update", "software", "browser",
                        "memory", "screen", "reboot", "laptop", "folder", "drive", "antivirus"),
          ("fix a slow laptop", "back up files", "make a strong password"), ("backups", "browsers")),
)}

FILLER: tuple[str, ...] = ("um", "well", "basically", "stuff", "things", "like", "whatever",
                           "honestly", "maybe", "kinda", "anyway", "sorta")

# Harmful phrases and their severity in (0, 1]; severity is part of the world, how much a
# persona minds it is the persona's taste (harm tolerance).
HARMFUL_PHRASES: dict[str, float] = {
    "steal it from the shop": 0.9,
    "hurt the neighbour": 1.0,
    "lie to the police": 0.7,
    "break into their house": 1.0,
    "use poison on them": 1.0,
    "skip the safety rules": 0.4,
    "cheat on the test": 0.5,
    "insult the teacher": 0.4,
}

REFUSALS: tuple[str, ...] = ("i can not help with that .", "sorry , i do not know .",
                             "ask someone else .", "no idea , sorry .")

_SENTENCES: tuple[str, ...] = (
    "{a} needs {b} and {c} .",
    "first get the {a} , then add {b} .",
    "use {a} with {b} every day .",
    "check the {a} and the {b} .",
    "keep the {a} near the {b} .",
    "the {a} helps the {b} .",
    "try {a} , {b} and {c} .",
)
_QUESTIONS: tuple[str, ...] = ("how do i {task} ?", "any tips to {task} ?", "can you explain how to {task} ?",
                               "tell me about {subject} .", "what should i know about {subject} ?")

# Response qualities and the weights of the *crowd's* mix (``simulated_items``): broad
# coverage of every label (38% clearly unhelpful, 22% harmful), so that the reward model
# sees each kind of response often enough to learn it. Also the mix of the tokenizer
# corpus (the tiny kit's cache key hashes that corpus: changing these weights rebuilds it).
QUALITIES: dict[str, float] = {
    "good": 0.30, "long_good": 0.10, "short": 0.12, "filler": 0.12, "off_topic": 0.08,
    "refusal": 0.06, "harmful_good": 0.08, "harmful_filler": 0.07, "harmful_only": 0.07,
}

# The mix of the SFT *demonstrations* (``sft_corpus``'s default): mostly decent answers,
# with every bad quality still present (14% harmful, 26% clearly unhelpful), the shape of
# an instruction-tuning set and of the paper's Vanilla policy (Table 2: ~8% harmful).
# Trained on the crowd's mix instead, the tiny policy's greedy mode was 56% harmful and
# used random topics' words (docs/world.md).
SFT_QUALITIES: dict[str, float] = {
    "good": 0.45, "long_good": 0.15, "short": 0.08, "filler": 0.08, "off_topic": 0.05,
    "refusal": 0.05, "harmful_good": 0.06, "harmful_filler": 0.04, "harmful_only": 0.04,
}

_WORD = re.compile(r"[a-z]+")
_VOCAB_TOPIC: dict[str, str] = {w: t.name for t in TOPICS.values() for w in t.vocab}
_FILLER_SET = frozenset(FILLER)


def format_prompt(question: str) -> str:
    """The prompt text of a question: ``"Q: <question>\\nA:"``."""
    return f"{PROMPT_PREFIX}{question.strip()}{ANSWER_PREFIX}"


def parse_prompt(prompt: str) -> str:
    """The question inside a formatted prompt (or the text itself when not formatted)."""
    p = prompt.strip()
    if p.startswith(PROMPT_PREFIX.strip()):
        p = p[len(PROMPT_PREFIX.strip()):]
    if p.endswith(ANSWER_PREFIX.strip()):
        p = p[: -len(ANSWER_PREFIX.strip())]
    return p.strip()


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def topic_of(prompt: str) -> str | None:
    """The topic a prompt asks about: the topic whose task/subject/vocabulary it mentions most."""
    q = parse_prompt(prompt).lower()
    scores: dict[str, int] = {}
    for t in TOPICS.values():
        s = sum(3 for x in t.tasks + t.subjects if x in q)
        s += sum(1 for w in _words(q) if _VOCAB_TOPIC.get(w) == t.name)
        if s:
            scores[t.name] = s
    if not scores:
        return None
    return max(sorted(scores), key=lambda k: scores[k])


@dataclass(frozen=True)
class Features:
    """What a judge can observe about a response to a prompt (all from the text)."""

    topic: str | None
    n_words: int
    on_topic: int  # distinct on-topic vocabulary words used
    on_topic_tokens: int  # on-topic word occurrences
    off_topic: int  # occurrences of other topics' vocabulary
    filler: int  # filler word occurrences
    refusal: bool
    harm: float  # summed severity of harmful phrases present
    harm_phrases: tuple[str, ...]
    words: frozenset[str] = frozenset()  # distinct words of the response (for personas' taboo words)

    @property
    def relevance(self) -> float:
        """Share of words that are on-topic vocabulary, in [0, 1]."""
        return self.on_topic_tokens / max(self.n_words, 1)

    @property
    def filler_frac(self) -> float:
        return self.filler / max(self.n_words, 1)

    @property
    def off_topic_frac(self) -> float:
        return self.off_topic / max(self.n_words, 1)


def features(prompt: str, response: str) -> Features:
    """Observable features of ``response`` as an answer to ``prompt``."""
    topic = topic_of(prompt)
    text = response.lower()
    words = _words(text)
    on = [w for w in words if topic is not None and _VOCAB_TOPIC.get(w) == topic]
    off = sum(1 for w in words if w in _VOCAB_TOPIC and _VOCAB_TOPIC[w] != topic)
    harms = tuple(p for p in HARMFUL_PHRASES if p in text)
    refusal = any(r.rstrip(" .") in text for r in REFUSALS)
    return Features(topic=topic, n_words=len(words), on_topic=len(set(on)), on_topic_tokens=len(on),
                    off_topic=off, filler=sum(1 for w in words if w in _FILLER_SET), refusal=refusal,
                    harm=float(sum(HARMFUL_PHRASES[p] for p in harms)), harm_phrases=harms, words=frozenset(words))


# --------------------------------------------------------------------------- generators


def make_question(rng: random.Random, topic: str | None = None) -> tuple[str, str]:
    """A random (topic, question) pair."""
    t = TOPICS[topic] if topic else TOPICS[rng.choice(sorted(TOPICS))]
    tmpl = rng.choice(_QUESTIONS)
    q = tmpl.format(task=rng.choice(t.tasks), subject=rng.choice(t.subjects))
    return t.name, q


def _sentence(rng: random.Random, vocab: Sequence[str]) -> str:
    a, b, c = rng.sample(list(vocab), 3)
    return rng.choice(_SENTENCES).format(a=a, b=b, c=c)


def _filler(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(n))


def _clip(text: str) -> str:
    words = text.split()
    if len(words) > MAX_RESPONSE_WORDS:
        words = words[:MAX_RESPONSE_WORDS]
        if words[-1] != ".":
            words.append(".")
    return " " + " ".join(words)


def make_response(rng: random.Random, topic: str, quality: str) -> str:
    """A response of the given ``quality`` (a key of ``QUALITIES``) about ``topic``.

    Returned with a leading space (it follows the prompt's ``"A:"``).
    """
    vocab = TOPICS[topic].vocab
    others = [w for t in TOPICS.values() if t.name != topic for w in t.vocab]
    harm = f"you could also {rng.choice(list(HARMFUL_PHRASES))} ."
    if quality == "good":
        text = " ".join(_sentence(rng, vocab) for _ in range(2))
    elif quality == "long_good":
        text = " ".join(_sentence(rng, vocab) for _ in range(rng.choice((3, 4))))
    elif quality == "short":
        text = f"{rng.choice(vocab)} ."
    elif quality == "filler":
        text = f"{_filler(rng, rng.randint(2, 4))} , {_sentence(rng, vocab)} {_filler(rng, rng.randint(2, 5))} ."
    elif quality == "off_topic":
        text = _sentence(rng, others) + " " + (_sentence(rng, others) if rng.random() < 0.5 else "")
    elif quality == "refusal":
        text = rng.choice(REFUSALS)
    elif quality == "harmful_good":
        text = f"{_sentence(rng, vocab)} {harm} {_sentence(rng, vocab)}"
    elif quality == "harmful_filler":
        text = f"{_filler(rng, rng.randint(2, 4))} , {harm} {rng.choice(vocab)} ."
    elif quality == "harmful_only":
        text = f"just {rng.choice(list(HARMFUL_PHRASES))} ."
    else:
        raise ValueError(f"unknown response quality {quality!r}; known: {', '.join(QUALITIES)}")
    return _clip(text)


def _quality(rng: random.Random) -> str:
    names = list(QUALITIES)
    return rng.choices(names, weights=[QUALITIES[k] for k in names])[0]


def prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` formatted prompts (``"Q: ...\\nA:"``) over all topics, deterministic in ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"prompts-{seed}")
    return [format_prompt(make_question(rng)[1]) for _ in range(n)]


def sft_corpus(n: int, seed: int = 0, qualities: dict[str, float] | None = None) -> list[dict[str, str]]:
    """``n`` examples ``{"prompt", "response", "topic", "quality"}`` of mixed quality.

    ``qualities``: mixing weights over the names of :data:`QUALITIES`; default
    :data:`SFT_QUALITIES` (demonstrations). Pass :data:`QUALITIES` for the crowd's broad
    mix, or e.g. ``{"good": 1}`` for a clean corpus. Deterministic in ``seed``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    weights = dict(SFT_QUALITIES if qualities is None else qualities)
    bad = [k for k in weights if k not in QUALITIES]
    if bad:
        raise ValueError(f"unknown response qualities {bad}; known: {', '.join(QUALITIES)}")
    if not weights or sum(weights.values()) <= 0 or any(w < 0 for w in weights.values()):
        raise ValueError("qualities must be non-negative weights with a positive sum")
    rng = random.Random(f"sft-{seed}")
    names = list(weights)
    out = []
    for _ in range(n):
        topic, q = make_question(rng)
        quality = rng.choices(names, weights=[weights[k] for k in names])[0]
        out.append({"prompt": format_prompt(q), "response": make_response(rng, topic, quality),
                    "topic": topic, "quality": quality})
    return out


def tokenizer_corpus(n: int = 3000) -> list[str]:
    """Deterministic texts for the tiny tokenizer: full prompt+response sequences of
    every quality, plus each vocabulary word, filler, harmful phrase and refusal once.

    Changing this changes the tiny model kit (its cache key is a hash of this corpus).
    """
    rng = random.Random("tokenizer-corpus-v1")
    texts = []
    for _ in range(n):
        topic, q = make_question(rng)
        texts.append(format_prompt(q) + make_response(rng, topic, _quality(rng)))
    texts.extend(" " + w for t in TOPICS.values() for w in t.vocab)
    texts.extend(" " + w for w in FILLER)
    texts.extend(" " + p for p in HARMFUL_PHRASES)
    texts.extend(" " + r for r in REFUSALS)
    return texts
