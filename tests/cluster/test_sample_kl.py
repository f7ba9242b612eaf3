"""The evaluation's KL to SFT is exact (issue 25, part 5): sample_with_kl sums the full-vocabulary KL
along each sampled response. Before, it was the one-sample estimate sum_t log pi(y_t) - log pi_ref(y_t),
which a report showed as "KL to SFT -0.03" for a policy that barely moved."""

import pytest
import torch
from helpers import perturbed
from transformers import AutoModelForCausalLM

from raydprm.config import RolloutConfig
from raydprm.core.kl import kl_from_logits
from raydprm.rollout.sampling import SamplingParams

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

PROMPTS = ["The crowd", "A helpful answer is", "x", "Why", "Tell me about votes", "Is it", "Hello", "Votes"]
SP = SamplingParams(max_new_tokens=8, temperature=1.0, seed=3)


@pytest.fixture(scope="module")
def pools(tiny_policy, tmp_path_factory):
    from raydprm.cluster.rollout_actor import RolloutPool

    moved = tmp_path_factory.mktemp("moved")
    perturbed(tiny_policy, seed=1, scale=0.01).save_pretrained(moved)  # a policy that barely moved
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_policy).save_pretrained(moved)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = RolloutConfig(num_replicas=1, num_cpus=0.5)
    pol, ref = RolloutPool.create(cfg, str(moved)), RolloutPool.create(cfg, tiny_policy)
    yield pol, ref, str(moved)
    pol.shutdown()
    ref.shutdown()
    ray.shutdown()


def _naive_kl(policy_dir, ref_dir, prompt_ids, token_ids):
    """Teacher-force both models one sequence at a time and sum the vocabulary KL of each response position."""
    p = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    q = AutoModelForCausalLM.from_pretrained(ref_dir).eval()
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        zp, zq = p(ids).logits[0], q(ids).logits[0]
    rows = slice(len(prompt_ids) - 1, ids.shape[1] - 1)
    return float(kl_from_logits(zp[rows], zq[rows]).sum())


def test_the_evaluation_kl_is_exact_and_never_negative(pools, tiny_policy):
    from raydprm.cluster.rollout_actor import sample_with_kl

    pol, ref, moved = pools
    texts, kl = sample_with_kl(pol, ref, PROMPTS, SP, chunk=3)  # chunks smaller than the batch
    assert len(texts) == len(kl) == len(PROMPTS)
    assert all(k >= 0 for k in kl), kl
    gen = pol.generate(PROMPTS, SP)  # seeded: the same samples again
    assert [r.text for r in gen] == texts
    for r, k in zip(gen, kl):
        want = _naive_kl(moved, tiny_policy, r.prompt_ids, r.token_ids) if r.token_ids else 0.0
        assert k == pytest.approx(want, rel=1e-4, abs=1e-7)


def test_kl_to_itself_is_zero(pools):
    from raydprm.cluster.rollout_actor import sample_with_kl

    _, ref, _ = pools
    _, kl = sample_with_kl(ref, ref, PROMPTS, SP)
    assert max(kl) <= 1e-9
