"""Guarantees of the preference store (issue 4, item 6): atomic batches, idempotent vote
ids, refused bad votes naming vote and rule, SIGKILL durability, concurrent writers, and
posteriors equal to a recount of the log after random interleavings."""

import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from raydprm.store import PreferenceStore, VoteError

P, R = "Q: how do i bake bread ?\nA:", " bread needs flour and yeast ."


def vote(i, label=0, persona="scientist", prompt=P, response=R, **kw):
    return {"vote_id": f"v{i}", "prompt": prompt, "response": response, "persona": persona, "label": label, **kw}


BAD = {
    "unknown label": (dict(label="great"), "known label"),
    "label out of range": (dict(label=6), "known label"),
    "unknown persona": (dict(persona="pirate"), "known persona"),
    "nan dist": (dict(label=None, dist=[math.nan, 1, 0, 0, 0, 0]), "dist is finite"),
    "negative dist": (dict(label=None, dist=[-0.5, 1.5, 0, 0, 0, 0]), "dist is non-negative"),
    "unnormalised dist": (dict(label=None, dist=[0.5, 0.4, 0, 0, 0, 0]), "dist sums to 1"),
    "wrong length": (dict(label=None, dist=[0.5, 0.5]), "dist length"),
    "label and dist": (dict(dist=[1, 0, 0, 0, 0, 0]), "exactly one of label or dist"),
    "empty response": (dict(response="   "), "response is not empty"),
    "oversized prompt": (dict(prompt="x" * 101), "prompt length"),
    "negative weight": (dict(weight=-1.0), "weight is finite and >= 0"),
    "nan weight": (dict(weight=math.nan), "weight is finite and >= 0"),
    "unknown field": (dict(colour="red"), "known fields only"),
    "missing vote id": (dict(vote_id=""), "vote_id is a non-empty string"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_one_bad_vote_refuses_the_whole_batch(tmp_path, case):
    s = PreferenceStore(tmp_path / "s.db", max_text_chars=100)
    s.add_votes([vote(0)])
    kw, rule = BAD[case]
    bad = vote(99, **kw) if "vote_id" not in kw else {**vote(99), **kw}
    batch = [vote(1), vote(2, prompt="Q: other ?\nA:"), bad, vote(3)]
    with pytest.raises(VoteError) as e:
        s.add_votes(batch)
    msg = str(e.value)
    assert rule in msg and "#2" in msg and "nothing of this batch was written" in msg
    if case != "missing vote id":
        assert "'v99'" in msg
    assert s.count_votes() == 1 and s.count_items() == 1  # nothing of the batch
    assert s.posterior(P, R)["n_votes"] == 1


def test_a_single_vote_dict_is_refused_clearly(tmp_path):
    from raydprm.store import StoreError

    s = PreferenceStore(tmp_path / "s.db")
    with pytest.raises(StoreError, match="list of vote dicts"):
        s.add_votes(vote(1))
    assert s.add_votes(v for v in [vote(1)]) == {"added": 1, "duplicates": 0}


def test_idempotent_retries(tmp_path):
    s = PreferenceStore(tmp_path / "s.db")
    batch = [vote(i, i % 3, ts=float(i)) for i in range(10)]
    assert s.add_votes(batch) == {"added": 10, "duplicates": 0}
    before = s.posterior(P, R)
    assert s.add_votes(batch) == {"added": 0, "duplicates": 10}  # a retry of the whole batch
    assert s.add_votes(batch[:3] + [vote(10, 1)] + [vote(10, 1)]) == {"added": 1, "duplicates": 4}
    assert s.count_votes() == 11
    after = s.posterior(P, R)
    assert after["n_votes"] == 11 and after["alpha"][1] == before["alpha"][1] + 1
    # the same id with different content is refused, and nothing of that batch lands
    with pytest.raises(VoteError, match="vote ids are immutable"):
        s.add_votes([vote(11, 0), vote(3, label=5)])
    assert s.count_votes() == 11


def test_posterior_equals_recount_after_random_interleavings(tmp_path):
    rng = np.random.default_rng(0)
    items = [(P, f" answer number {k} .") for k in range(4)]
    personas = ["scientist", "teacher", "artist"]
    votes = []
    for i in range(400):
        p, r = items[rng.integers(4)]
        v = {"vote_id": f"r{i}", "prompt": p, "response": r, "persona": personas[rng.integers(3)],
             "weight": float(rng.uniform(0.1, 2.0)), "ts": float(rng.uniform(0, 1000))}
        if rng.random() < 0.3:
            d = rng.dirichlet(np.ones(6))
            v["dist"] = (d / d.sum()).tolist()
        else:
            v["label"] = int(rng.integers(6))
        votes.append(v)
    for half_life in (0.0, 250.0):
        stores = []
        for order in range(3):  # the same votes in different orders and batchings
            s = PreferenceStore(tmp_path / f"s{half_life}-{order}.db", half_life_s=half_life)
            perm = rng.permutation(len(votes))
            cuts = np.sort(rng.choice(np.arange(1, len(votes)), size=12, replace=False))
            for chunk in np.split(perm, cuts):
                s.add_votes([votes[j] for j in chunk])
            stores.append(s)
        at = 1500.0
        for p, r in items:
            for persona in personas:
                ref = stores[0].recount(p, r, persona, at=at)
                for s in stores:
                    np.testing.assert_allclose(s.posterior(p, r, persona, at=at)["alpha"], ref, rtol=1e-9)
            for s in stores:
                np.testing.assert_allclose(s.posterior(p, r, at=at)["alpha"], stores[0].recount(p, r, at=at),
                                           rtol=1e-9)
        # a full rebuild from the log changes nothing
        before = stores[0].distribution(*items[0], at=at)
        assert stores[0].rebuild_posteriors() == len(votes)
        np.testing.assert_allclose(stores[0].distribution(*items[0], at=at), before, rtol=1e-12)


WRITER = textwrap.dedent("""
    import sys
    from raydprm.store import PreferenceStore
    path, tag, n_batches, size, sync = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    s = PreferenceStore(path, synchronous=sync)
    if len(sys.argv) > 6:  # start barrier: every writer is ready before any writes
        import os, time
        print("READY", flush=True)
        while not os.path.exists(sys.argv[6]):
            time.sleep(0.01)
    for b in range(n_batches):
        batch = [{"vote_id": f"{tag}-{b}-{k}", "prompt": "Q: p ?\\nA:", "response": f" r{k % 7} .",
                  "persona": "teacher", "label": k % 6} for k in range(size)]
        # overlapping ids shared by every writer: they must count once
        batch.append({"vote_id": f"shared-{b}", "prompt": "Q: p ?\\nA:", "response": " shared .",
                      "persona": "ceo", "label": 0})
        s.add_votes(batch)
        print(f"ACK {b}", flush=True)
""")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd()] + [p for p in sys.path if p])
    return env


def test_acknowledged_votes_survive_sigkill(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    db = tmp_path / "s.db"
    for sync in ("NORMAL", "FULL"):
        proc = subprocess.Popen([sys.executable, str(script), str(db), sync, "1000", "50", sync],
                                stdout=subprocess.PIPE, text=True, env=_env())
        acked = -1
        for line in proc.stdout:
            acked = int(line.split()[1])
            if acked >= 5:
                proc.send_signal(signal.SIGKILL)  # right after an acknowledgement
                break
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        s = PreferenceStore(db)
        assert s.count_votes() >= 51 * (acked + 1)
        with s._read() as cur:
            got = {r[0] for r in cur.execute("SELECT vote_id FROM votes WHERE vote_id LIKE ?", (f"{sync}-%",))}
        want = {f"{sync}-{b}-{k}" for b in range(acked + 1) for k in range(50)}
        assert want <= got
        # and the derived posteriors are consistent with the log that survived
        np.testing.assert_allclose(s.posterior("Q: p ?\nA:", " r3 .")["alpha"], s.recount("Q: p ?\nA:", " r3 ."))
        s.close()


def test_concurrent_writers_lose_nothing(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    db = tmp_path / "s.db"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), str(db), f"w{i}", "12", "40", "NORMAL", str(go)],
                              stdout=subprocess.PIPE, text=True, env=_env()) for i in range(3)]
    for p in procs:
        assert p.stdout.readline().strip() == "READY"
    go.touch()  # all writers start together and contend for the write lock
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and out.count("ACK") == 12
    s = PreferenceStore(db)
    assert s.count_votes() == 3 * 12 * 40 + 12  # shared ids counted once
    for k in range(7):
        post = s.posterior("Q: p ?\nA:", f" r{k} .")
        np.testing.assert_allclose(post["alpha"], s.recount("Q: p ?\nA:", f" r{k} ."))
    assert s.posterior("Q: p ?\nA:", " shared .")["n_votes"] == 12
