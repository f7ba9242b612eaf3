"""Direct alignment (crowd DPO) on the same actor group as PPO: two gloo ranks train on pairs
built from a store export, the loss falls, and a new group resumes from a checkpoint."""

from __future__ import annotations

import pytest
import torch

from raydprm.config import HH_REWARDS, AlignConfig, EngineSection

pytestmark = [pytest.mark.ray, pytest.mark.slow]

GOOD, BAD = [0.7, 0.2, 0.1, 0, 0, 0], [0.1, 0.1, 0.2, 0.1, 0.2, 0.3]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_crowd_dpo_on_a_two_rank_group_trains_and_resumes(ray_local, tiny_kit, tmp_path):
    from raydprm.cluster.learner_group import LearnerActor, LearnerGroup
    from raydprm.models.policy import load_tokenizer
    from raydprm.train.direct_alignment import PairBatch, pairs_from_export

    rows = []
    for k in range(8):
        p = f"Q: how do i water plant {k} ?\nA:"
        rows += [{"prompt": p, "response": f" water it gently every {k + 2} days .", "target": GOOD},
                 {"prompt": p, "response": " no idea , figure it out .", "target": BAD}]
    pairs = pairs_from_export(rows, HH_REWARDS, pairs_per_prompt=1)
    batch = PairBatch.from_pairs(pairs, load_tokenizer("tiny-gpt2"), max_prompt_tokens=16, max_response_tokens=12)
    cfg = AlignConfig(algo="crowd_dpo", beta=0.5, batch=8, minibatch=8, lr=2e-3)
    engine = EngineSection(micro_batch=4, engine="torch", num_workers=2, num_cpus_per_worker=0.5)
    group = LearnerGroup.create_aligner(cfg, "tiny-gpt2", engine=engine, seed=0, timeout_s=300)
    try:
        assert [i["rank"] for i in group.info()] == [0, 1]
        before = group.evaluate(batch)["align/eval_loss"]
        for _ in range(3):
            m = group.update(batch)
        assert group.evaluate(batch)["align/eval_loss"] < before
        assert 0.5 < m["align/target"] < 1.0  # soft crowd targets reached the loss
        group.save(tmp_path / "ckpt")
        group.update(batch)
        want = group.group.all(LearnerActor.policy_state_dict)[0]
    finally:
        group.shutdown()
    resumed = LearnerGroup.create_aligner(cfg, "tiny-gpt2", engine=engine, seed=0, timeout_s=300)
    try:
        resumed.load(tmp_path / "ckpt")
        assert [i["step"] for i in resumed.info()] == [3, 3]
        resumed.update(batch)
        got = resumed.group.all(LearnerActor.policy_state_dict)[0]
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in got)  # bit for bit
    finally:
        resumed.shutdown()
