"""Length bias of the Luce rule and annotator vs density mixtures, with tiny LMs
(Dumoulin et al., TMLR 2024, Sec. 5.2: Table 2 and Figure 6, at toy scale).

The paper trains Transformers on LM1B sentences of < 50 tokens (*whole*), 1-20 tokens
(*short*) and 30-50 tokens (*long*). Here the "language" is synthetic so that everything
runs offline in minutes: tokens follow one seeded first-order Markov chain over ``V``
content tokens, and the three corpora differ only in their length distribution
(*whole*: a normal of mean 25 and std 10 rounded and clipped to 1..50; *short*: the
whole corpus's sentences of <= 20 tokens; *long*: those of 30..50). Three tiny GPT-2s
(the kit's tiny-gpt2 shape: 2 layers x 64) are trained in code on them.

1. **Table 2.** Sentences sampled from *whole* are binned S (<= 20 tokens), M (21-29),
   L (>= 30). For each annotator model (whole, short, long) and each bin pair,
   ``P(X > Y)`` is the mean of ``P(x_A > x_B)`` over all x_A in X, x_B in Y under the
   Luce rule (Eq. 9, ``Omega = log p(x)``) and the length-normalised rule (Eq. 26,
   ``Omega = log p(x) / |x|``, |x| = scored tokens incl. EOS). The paper's direction:
   with Luce even the *long* annotator prefers short sentences; length-normalised,
   it prefers long ones.
2. **Figure 6 (right).** Pairs sampled from *whole* are labelled by an *annotator
   mixture* (Eq. 27: per pair, short or long with probability 1/2, length-normalised
   rule) or by a *density mixture* (Eq. 28: one annotator with
   pi_mix = (pi_short + pi_long) / 2). A copy of *whole* is adapted to each data set
   with the length-normalised rule as its model PBDE (BCE), then sampled; the paper's
   finding: the annotator mixture yields *more* medium-length sentences than either
   annotator, the density mixture a bimodal length distribution.

Run: ``raydprm experiments length-bias [--quick] --out DIR``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raydprm.core.pairwise_loss import pairwise_loss
from raydprm.core.pbde import length_normalised_omega
from raydprm.models.tiny import TINY_MODELS

__all__ = ["LengthSettings", "FULL", "QUICK", "run", "BINS"]

BINS = {"S": (1, 20), "M": (21, 29), "L": (30, 50)}
MAX_LEN = 50


@dataclass(frozen=True)
class LengthSettings:
    vocab: int = 32  # content tokens; EOS (= BOS) is token id ``vocab``
    n_corpus: int = 6000  # sentences of the whole corpus (short / long are its subsets)
    lm_steps: int = 600  # training steps of each annotator LM
    lm_batch: int = 64
    lm_lr: float = 3e-3
    n_samples: int = 600  # sentences sampled from *whole* for Table 2
    n_pairs: int = 2048  # annotated pairs per mixture data set (paper: 2^15)
    adapt_steps: int = 400
    adapt_batch: int = 64  # pairs per step
    adapt_lr: float = 1e-3
    n_eval_samples: int = 600  # sentences sampled after adaptation
    seed: int = 0


FULL = LengthSettings()
QUICK = replace(FULL, n_corpus=1500, lm_steps=120, n_samples=160, n_pairs=256, adapt_steps=40,
                n_eval_samples=160)


# ----------------------------------------------------------------------------- corpora and LMs


def make_corpora(s: LengthSettings) -> dict[str, list[list[int]]]:
    """Sentences (content token ids) of the whole / short / long corpora: one Markov chain."""
    rng = np.random.default_rng(s.seed)
    trans = rng.dirichlet(np.full(s.vocab, 0.3), size=s.vocab)  # (V, V) peaked transitions
    lengths = np.clip(np.rint(rng.normal(25, 10, size=s.n_corpus)), 1, MAX_LEN).astype(int)
    sents = []
    for n in lengths:
        x = [int(rng.integers(s.vocab))]
        for _ in range(n - 1):
            x.append(int(rng.choice(s.vocab, p=trans[x[-1]])))
        sents.append(x)
    return {"whole": sents, "short": [x for x in sents if len(x) <= 20],
            "long": [x for x in sents if 30 <= len(x) <= MAX_LEN]}


def new_lm(s: LengthSettings, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    kw = dict(TINY_MODELS["tiny-gpt2"].kwargs)
    kw.update(n_positions=MAX_LEN + 2, vocab_size=s.vocab + 1, bos_token_id=s.vocab, eos_token_id=s.vocab,
              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**kw)).eval()


def pad_batch(sents: list[list[int]], eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[BOS] x [EOS], right-padded: ids (B, N + 2) and the mask of scored tokens (B, N + 1)."""
    n = max(len(x) for x in sents) + 2
    ids = torch.full((len(sents), n), eos, dtype=torch.long)
    mask = torch.zeros(len(sents), n - 1)
    for i, x in enumerate(sents):
        ids[i, 1:len(x) + 1] = torch.tensor(x)
        mask[i, :len(x) + 1] = 1.0  # the content tokens and the final EOS
    return ids, mask


def seq_logprob(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(x) = sum_t log p(x_t | x_<t) over content tokens and EOS: (B,)."""
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1]  # (B, N+1, V)
    lp = torch.gather(F.log_softmax(logits.float(), -1), -1, ids[:, 1:, None]).squeeze(-1)
    return (lp * mask).sum(1)


def train_lm(sents: list[list[int]], s: LengthSettings, seed: int):
    model = new_lm(s, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lm_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.lm_steps)
    rng = np.random.default_rng(seed)
    for _ in range(s.lm_steps):
        batch = [sents[i] for i in rng.integers(len(sents), size=s.lm_batch)]
        ids, mask = pad_batch(batch, s.vocab)
        loss = -seq_logprob(model, ids, mask).sum() / mask.sum()  # token-mean NLL
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def sample(model, n: int, s: LengthSettings, seed: int) -> list[list[int]]:
    """Ancestral samples (content tokens), at most MAX_LEN tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((n, 1), s.vocab, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    past = None
    out = [[] for _ in range(n)]
    for t in range(MAX_LEN + 1):
        o = model(input_ids=ids[:, -1:], past_key_values=past, use_cache=True)
        past = o.past_key_values
        probs = torch.softmax(o.logits[:, -1].float(), -1)
        if t == 0:
            probs[:, s.vocab] = 0  # no empty sentences
        if t == MAX_LEN:
            probs = F.one_hot(torch.full((n,), s.vocab), s.vocab + 1).float()  # cap the length
        nxt = torch.multinomial(probs, 1, generator=g).squeeze(1)
        for i in torch.nonzero(~done & (nxt != s.vocab)).flatten().tolist():
            out[i].append(int(nxt[i]))
        done |= nxt == s.vocab
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt[:, None]], 1)
    return out


@torch.no_grad()
def score(model, sents: list[list[int]], eos: int, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x) (N,) and |x| = scored tokens incl. EOS (N,)."""
    lps, lens = [], []
    for i in range(0, len(sents), chunk):
        ids, mask = pad_batch(sents[i:i + chunk], eos)
        lps.append(seq_logprob(model, ids, mask))
        lens.append(mask.sum(1))
    return torch.cat(lps).double(), torch.cat(lens).double()


def bin_of(n: int) -> str:
    return next(k for k, (lo, hi) in BINS.items() if lo <= n <= hi)


def length_fractions(sents: list[list[int]]) -> dict[str, float]:
    b = [bin_of(len(x)) for x in sents]
    return {k: b.count(k) / len(b) for k in BINS}


# ----------------------------------------------------------------------------- Table 2


def table2(annotators: dict[str, Any], samples: list[list[int]], eos: int) -> dict[str, dict[str, float]]:
    """P(X > Y) for X, Y in S/M/L and each annotator, Luce (Eq. 9) and length-normalised (Eq. 26)."""
    bins = np.array([bin_of(len(x)) for x in samples])
    out = {}
    for name, model in annotators.items():
        lp, n = score(model, samples, eos)
        row = {}
        for rule, om in (("luce", lp), ("length_normalised", lp / n)):
            for a, b in (("S", "M"), ("S", "L"), ("M", "L")):
                oa, ob = om[bins == a], om[bins == b]
                if len(oa) == 0 or len(ob) == 0:
                    row[f"{rule}_P({a}>{b})"] = float("nan")
                    continue
                row[f"{rule}_P({a}>{b})"] = float(torch.sigmoid(oa[:, None] - ob[None, :]).mean())  # (Eq. 9 / 26)
        out[name] = row
    return out


# ----------------------------------------------------------------------------- adaptation


def mixture_labels(short, long_, xa, xb, kind: str, s: LengthSettings, g: np.random.Generator) -> torch.Tensor:
    """y = 1 if x_A wins, from the annotator mixture (Eq. 27) or the density mixture (Eq. 28)."""
    (la_s, na), (lb_s, nb) = score(short, xa, s.vocab), score(short, xb, s.vocab)
    la_l, lb_l = score(long_, xa, s.vocab)[0], score(long_, xb, s.vocab)[0]
    if kind == "annotator":
        pick_long = torch.from_numpy(g.random(len(xa)) < 0.5)
        la, lb = torch.where(pick_long, la_l, la_s), torch.where(pick_long, lb_l, lb_s)
    else:
        la = torch.logaddexp(la_s, la_l) - np.log(2)  # log pi_mix   (Eq. 28)
        lb = torch.logaddexp(lb_s, lb_l) - np.log(2)
    p = torch.sigmoid(length_normalised_omega(la, na) - length_normalised_omega(lb, nb))
    return (torch.from_numpy(g.random(len(xa))) < p).double()


def adapt(whole, xa, xb, y: torch.Tensor, s: LengthSettings, seed: int):
    """A copy of *whole* fitted with BCE under the length-normalised model PBDE."""
    model = copy.deepcopy(whole).train(False)
    opt = torch.optim.AdamW(model.parameters(), lr=s.adapt_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.adapt_steps)
    bt = pairwise_loss("bt")
    rng = np.random.default_rng(seed)
    win = [a if yi > 0 else b for a, b, yi in zip(xa, xb, y.tolist())]
    lose = [b if yi > 0 else a for a, b, yi in zip(xa, xb, y.tolist())]
    for _ in range(s.adapt_steps):
        idx = rng.integers(len(win), size=s.adapt_batch)
        ids, mask = pad_batch([win[i] for i in idx] + [lose[i] for i in idx], s.vocab)
        om = length_normalised_omega(seq_logprob(model, ids, mask), mask.sum(1))  # (2b,)
        per_pair, _ = bt(om[:s.adapt_batch], om[s.adapt_batch:])  # -log sigmoid(Omega(w) - Omega(l))
        loss = per_pair.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


# ----------------------------------------------------------------------------- run


def _hist(path: Path, groups: dict[str, list[list[int]]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    edges = np.arange(0.5, MAX_LEN + 1.5, 1.0)
    for name, sents in groups.items():
        ax.hist([len(x) for x in sents], bins=edges, histtype="step", density=True, label=name, lw=1.5)
    ax.set_xlabel("sentence length (tokens)")
    ax.set_ylabel("frequency")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out_dir: str | Path, quick: bool = False, seed: int = 0, settings: LengthSettings | None = None,
        log=print) -> dict[str, Any]:
    s = settings or replace(QUICK if quick else FULL, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpora = make_corpora(s)
    lms = {name: train_lm(sents, s, seed=s.seed * 100 + i) for i, (name, sents) in enumerate(corpora.items())}
    log(f"trained whole/short/long LMs on {[len(v) for v in corpora.values()]} sentences "
        f"[{time.perf_counter() - t0:.0f} s]")
    samples = {name: sample(m, s.n_samples, s, seed=s.seed + 7 + i) for i, (name, m) in enumerate(lms.items())}
    metrics: dict[str, Any] = {"settings": asdict(s),
                               "sampled_length_fractions": {k: length_fractions(v) for k, v in samples.items()},
                               "mean_length": {k: float(np.mean([len(x) for x in v])) for k, v in samples.items()}}
    metrics["table2"] = table2(lms, samples["whole"], s.vocab)
    _hist(out / "lengths_pretrained.png", samples, "Sampled lengths of the three LMs (Fig. 6 left)")

    g = np.random.default_rng(s.seed + 99)
    pool = sample(lms["whole"], 2 * s.n_pairs, s, seed=s.seed + 31)
    xa, xb = pool[:s.n_pairs], pool[s.n_pairs:]
    adapted = {}
    for i, kind in enumerate(("annotator", "density")):
        y = mixture_labels(lms["short"], lms["long"], xa, xb, kind, s, g)
        model = adapt(lms["whole"], xa, xb, y, s, seed=s.seed + 50 + i)
        adapted[f"{kind}_mixture"] = sample(model, s.n_eval_samples, s, seed=s.seed + 60 + i)
        log(f"adapted on the {kind} mixture [{time.perf_counter() - t0:.0f} s]")
    metrics["adapted_length_fractions"] = {k: length_fractions(v) for k, v in adapted.items()}
    metrics["adapted_mean_length"] = {k: float(np.mean([len(x) for x in v])) for k, v in adapted.items()}
    _hist(out / "lengths_adapted.png", {"whole (pi_pre)": samples["whole"], **adapted},
          "Lengths after adapting whole on each mixture (Fig. 6 right)")
    metrics["elapsed_s"] = time.perf_counter() - t0
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log(report(metrics))
    return metrics


def report(m: dict[str, Any]) -> str:
    lines = ["| annotator | rule | P(S>M) | P(S>L) | P(M>L) |", "|---|---|---|---|---|"]
    for name, row in m["table2"].items():
        for rule in ("luce", "length_normalised"):
            lines.append(f"| {name} | {rule} | " + " | ".join(f"{row[f'{rule}_P({a}>{b})']:.4f}"
                                                               for a, b in (("S", "M"), ("S", "L"), ("M", "L"))) + " |")
    lines += ["", "| model | S (<=20) | M (21-29) | L (>=30) | mean length |", "|---|---|---|---|---|"]
    rows = {**{k: (v, m["mean_length"][k]) for k, v in m["sampled_length_fractions"].items()},
            **{k: (v, m["adapted_mean_length"][k]) for k, v in m["adapted_length_fractions"].items()}}
    for name, (fr, ml) in rows.items():
        lines.append(f"| {name} | {fr['S']:.3f} | {fr['M']:.3f} | {fr['L']:.3f} | {ml:.1f} |")
    return "\n".join(lines)
