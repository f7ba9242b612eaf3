"""Sweep files (raydprm.tune.space), trial capacity, the bundle layout and the results table: no Ray.

Every parser error is one line that names the file and the dotted key; Dirichlet mixtures lie
on the simplex and are the same for the same seed; one trial's bundles add up to what the
pipeline reserves (plus the driver's bundle and evaluate's reference generators)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from raydprm.cluster.run_plan import bundle_layout, required_resources
from raydprm.config import Config, load_config
from raydprm.tune.capacity import demand, max_concurrent, shortfall
from raydprm.tune.results import pareto_front, read_results, result_row, write_results
from raydprm.tune.space import SweepSpaceError, load_space

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, key, words", [
    ("space:\n  ppo.betta: {grid: [0.1]}\n", "space.ppo.betta", "did you mean 'ppo.beta'"),
    ("space:\n  ppo.beta: {loguniform: [0, 1]}\n", "space.ppo.beta", "0 < low"),
    ("space:\n  ppo.beta: {uniform: [1, 0.5]}\n", "space.ppo.beta", "low < high"),
    ("space:\n  ppo.beta: {gaussian: [0, 1]}\n", "space.ppo.beta", "unknown domain 'gaussian'"),
    ("space:\n  ppo.beta: {grid: [0.1, -1]}\n", "space.ppo.beta", "out of range"),
    ("space:\n  ppo.epochs: {randint: [1.5, 3]}\n", "space.ppo.epochs", "integer bounds"),
    ("space:\n  reward.cost: {grid: [reward_gap, nope.npy]}\n", "space.reward.cost[1]", "does not exist"),
    ("space:\n  reward.cost: {grid: [reward_gap, wasserstein7]}\n", "space.reward.cost", "neither a cost name"),
    ("space:\n  crowd.mixture: {named: {a: {wizard: 1}}}\n", "space.crowd.mixture.a", "unknown persona(s) ['wizard']"),
    ("space:\n  crowd.mixture: {dirichlet: {alpha: [1, 2], personas: [ceo, artist, teacher]}}\n",
     "space.crowd.mixture", "3 positive numbers"),
    ("space:\n  crowd.mixture: {named: {a: {ceo: -1}}}\n", "space.crowd.mixture.a", ">= 0"),
    ("space:\n  ppo.beta: {dirichlet: {}}\n", "space.ppo.beta", "for persona mixtures"),
    ("space: {ppo.beta: 0.1}\nscheduler: {type: hyperband}\n", "scheduler.type", "'hyperband'"),
    ("space: {ppo.beta: 0.1}\nscheduler: {type: asha, grace: 1}\n", "scheduler.grace", "not an option of asha"),
    ("space: {ppo.beta: 0.1}\nscheduler: {type: pbt, mutations: {reward.lr: [0.1]}}\n",
     "scheduler.mutations.reward.lr", "only mutate ppo.*"),
    ("space: {ppo.beta: 0.1}\nscheduler: {type: pbt, perturbation_interval: 3, mutations: {ppo.beta: [0.1, 0.2]}}\n"
     "overrides: [pipeline.checkpoint_every=2]\n", "perturbation_interval", "multiple of pipeline.checkpoint_every"),
    ("space: {ppo.beta: 0.1}\nnum_trials: 3\n", "num_trials", "unknown key"),
    ("space: {}\n", "space", "needs a mapping"),
])
def test_parser_errors_name_the_key(tmp_path, text, key, words):
    p = _write(tmp_path, text)
    with pytest.raises(SweepSpaceError) as e:
        load_space(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and key in msg and words in msg, msg


def test_a_wrong_shaped_cost_matrix_is_refused_with_its_key(tmp_path):
    np.save(tmp_path / "m.npy", np.ones((3, 3)) - np.eye(3))  # 3 x 3, but there are 6 labels
    p = _write(tmp_path, "space:\n  reward.cost: {grid: [ordinal, m.npy]}\n")
    with pytest.raises(SweepSpaceError, match=r"space\.reward\.cost = 'm\.npy'.*3x3, expected 6x6"):
        load_space(p)


def test_labels_resolve_to_config_values(tmp_path):
    M = np.abs(np.subtract.outer(np.arange(6.0), np.arange(6.0)))
    np.save(tmp_path / "lin.npy", M)
    p = _write(tmp_path, """
space:
  ppo.beta: {loguniform: [0.01, 1.0]}
  reward.cost: {grid: [reward_gap, lin.npy]}
  crowd.mixture: {named: {uniform: {}, pair: {ceo: 3, artist: 1}}}
  ppo.lr: 0.001
""")
    s = load_space(p)
    assert s.swept == ("ppo.beta", "reward.cost", "crowd.mixture")
    vals = s.resolve({"ppo.beta": 0.1, "reward.cost": "lin.npy", "crowd.mixture": "pair", "ppo.lr": 0.001})
    assert vals["reward.cost"] == str((tmp_path / "lin.npy").resolve())  # a trial runs elsewhere: absolute
    assert vals["crowd.mixture"] == {"ceo": 3.0, "artist": 1.0}
    cfg = Config().override(s.overrides_of({"ppo.beta": 0.1, "reward.cost": "lin.npy", "crowd.mixture": "pair"}))
    assert cfg.ppo.beta == 0.1 and cfg.crowd.mixture == {"ceo": 3.0, "artist": 1.0}
    from raydprm.models.dprm import label_scale_from_config
    from raydprm.train.reward import resolve_cost

    assert np.array_equal(resolve_cost(cfg.reward.cost, label_scale_from_config(cfg.labels)).numpy(), M)


def test_dirichlet_mixtures_are_on_the_simplex_and_fixed_by_the_seed(tmp_path):
    text = "seed: 7\nspace:\n  crowd.mixture: {dirichlet: {alpha: 0.5, personas: [ceo, artist, teacher], samples: 5}}\n"
    a, b = load_space(_write(tmp_path, text, "a.yaml")), load_space(_write(tmp_path, text, "b.yaml"))
    pa, pb = a.param("crowd.mixture"), b.param("crowd.mixture")
    assert pa.args == tuple(f"dirichlet-{i}" for i in range(5))
    assert dict(pa.values) == dict(pb.values)  # same seed, same draws (a resumed sweep sees the same weights)
    for w in pa.values.values():
        assert set(w) == {"ceo", "artist", "teacher"}
        assert all(x >= 0 for x in w.values()) and abs(sum(w.values()) - 1) < 1e-5
    c = load_space(_write(tmp_path, text.replace("seed: 7", "seed: 8"), "c.yaml")).param("crowd.mixture")
    assert dict(c.values) != dict(pa.values)


def test_pbt_mutations_join_the_space(tmp_path):
    p = _write(tmp_path, "scheduler: {type: pbt, perturbation_interval: 4, mutations: {ppo.beta: {loguniform: "
                         "[0.01, 0.5]}}}\noverrides: [pipeline.checkpoint_every=2]\nspace: {ppo.lr: 0.001}\n")
    s = load_space(p)
    assert s.scheduler.type == "pbt" and [m.key for m in s.scheduler.mutations] == ["ppo.beta"]
    assert s.swept == ("ppo.beta",) and s.param("ppo.beta").kind == "loguniform"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "sweeps").glob("*.yaml")))
def test_example_sweeps_parse(name):
    s = load_space(ROOT / "sweeps" / name)
    assert s.swept, name


def test_bundles_cover_every_actor_of_a_run():
    cfg = load_config(None, ["rollout.num_replicas=2", "reward.num_replicas=3", "engine.num_workers=2",
                             "ppo.minibatch=8", "rollout.num_gpus=1", "engine.num_gpus_per_worker=1"])
    bundles, off = bundle_layout(cfg)
    assert off == {"driver": 0, "rollout": 1, "reward": 3, "learner": 6, "store": 8, "reference": 9}
    assert len(bundles) == 1 + 2 + 3 + 2 + 1 + 2
    d, need = demand(bundles), required_resources(cfg)
    # the PPO stage's peak + the trial's own bundle + evaluate's reference generators
    assert d["CPU"] == pytest.approx(need.cpu + 1.0 + 2 * cfg.rollout.num_cpus)
    assert d["GPU"] == pytest.approx(need.gpu + 2 * cfg.rollout.num_gpus)
    assert all(b["GPU"] == 1 for b in bundles[1:3] + bundles[6:8] + bundles[9:])


def test_max_concurrent_is_the_scarcest_resource():
    per = {"CPU": 3.1, "GPU": 2.0}
    assert max_concurrent(per, {"CPU": 32, "GPU": 8}) == 4      # GPUs: 8 // 2
    assert max_concurrent(per, {"CPU": 7, "GPU": 8}) == 2       # CPUs: 7 // 3.1
    assert max_concurrent(per, {"CPU": 32, "GPU": 8}, cap=3) == 3
    assert max_concurrent({"CPU": 3.0}, {"CPU": 9.0}) == 3      # exact fit counts
    assert max_concurrent(per, {"CPU": 1}) == 1                 # an autoscaler may still add nodes
    assert shortfall(per, {"CPU": 4, "GPU": 1}) == {"GPU": (2.0, 1.0)}
    assert demand([{"CPU": 1}], outside=[{"CPU": 2}] * 2) == {"CPU": 5.0}  # Ray Train's workers count


def test_pareto_front_keeps_only_undominated_points():
    pts = [(0.1, 0.2), (0.2, 0.1), (0.3, 0.5), (0.4, 0.4), (0.05, -1.0), (float("nan"), 9.0)]
    front = pareto_front(pts)
    assert front == [(0.05, -1.0), (0.1, 0.2), (0.3, 0.5)]
    for kl, r in pts:  # every finite point is matched or beaten by a front point with no more KL
        if not math.isnan(kl):
            assert any(fk <= kl and fr >= r for fk, fr in front)


def test_results_table_best_first_with_a_column_per_swept_key(tmp_path):
    p = _write(tmp_path, "space:\n  ppo.beta: {grid: [0.01, 0.1]}\n  crowd.mixture: {named: {u: {}, c: {ceo: 3, "
                         "artist: 1}}}\n")
    s = load_space(p)
    m = {"eval/expected_reward": 0.2, "eval/kl": 1.5, "eval/win_rate": 40.0, "population/expected_reward": 0.1,
         "ppo/kl": 2.0, "step": 3}
    rows = [result_row(s, {"ppo.beta": 0.01, "crowd.mixture": "u"}, m, trial_id="a", status="done"),
            result_row(s, {"ppo.beta": 0.1, "crowd.mixture": "c"}, {**m, "eval/expected_reward": 0.5},
                       trial_id="b", status="done"),
            result_row(s, {"ppo.beta": 0.1, "crowd.mixture": "u"}, {"population/expected_reward": 0.9, "ppo/kl": 1.0,
                                                                   "step": 1}, trial_id="c", status="stopped")]
    out = write_results(tmp_path, s, rows)
    table = read_results(out["csv"])
    assert [r["trial_id"] for r in table] == ["b", "a", "c"]  # finished trials first, by held-out E[r]
    for col in ("ppo.beta", "crowd.mixture", "crowd.mixture.ceo", "expected_reward", "kl", "evaluated"):
        assert col in table[0], col
    assert float(table[0]["crowd.mixture.ceo"]) == pytest.approx(0.75)
    assert float(table[1]["crowd.mixture.ceo"]) == pytest.approx(0.5)  # uniform over the named personas
    assert table[2]["evaluated"] == "0" and float(table[2]["expected_reward"]) == pytest.approx(0.9)
    assert float(table[1]["kl"]) == 1.5 and table[1]["evaluated"] == "1"
    assert out["frontier"].stat().st_size > 0 and out["persona_weight"].stat().st_size > 0
    md = out["md"].read_text()
    assert [ln.split(" | ")[0] for ln in md.splitlines() if ln.startswith(("| a ", "| b ", "| c "))] == ["| b", "| a",
                                                                                                     "| c"]
    json.dumps({k: str(v) for k, v in out.items()})


class _Ckpt:
    """Stands in for a tune.Checkpoint: a directory that can be copied out."""

    def __init__(self, d):
        self.d = d

    def to_directory(self, path):
        import shutil

        shutil.copytree(self.d, path)


@pytest.mark.parametrize("trial_beta, source_beta, want", [(0.3, 0.1, 0.3), (0.1, 0.1, 0.07)])
def test_a_checkpoint_from_a_trial_with_another_beta_continues_with_the_trials_beta(tmp_path, trial_beta,
                                                                                   source_beta, want):
    from raydprm.tune.sweep import _unpack

    src = tmp_path / "src"
    src.mkdir()
    (src / "learner_state.json").write_text(json.dumps({"step": 4, "kl_coef": 0.07}))  # adaptive: beta moved
    (src / "trial.json").write_text(json.dumps({"trial_id": "a", "ppo.beta": source_beta}))
    (src / "progress.json").write_text(json.dumps({"step": 4, "history": []}))
    d = _unpack(_Ckpt(src), tmp_path / "run", load_config(None, [f"ppo.beta={trial_beta}"]))
    assert json.loads((d / "learner_state.json").read_text())["kl_coef"] == want
    assert json.loads((d / "progress.json").read_text())["step"] == 4
