"""`raydprm run`: stages with records, resume after SIGKILL, a killed generator, pre-flight, run-dir rules.

One tiny reference run (module fixture, in this process) is the baseline: a run SIGKILLed
mid-PPO and resumed, and a run whose generator is killed mid-PPO, must end with exactly its
metrics (transformers rollout engine, torch learner, CPU)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import kill_actor

from raydprm.cli import main
from raydprm.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]
TINY = ["sft.n_examples=48", "sft.epochs=1", "sft.batch_size=16", "crowd.n_items=24", "crowd.votes_per_item=4",
        "reward.epochs=1", "ppo.steps=3", "ppo.rollout_batch=4", "ppo.minibatch=4", "engine.micro_batch=4",
        "ppo.epochs=1", "engine.engine=torch", "rollout.max_new_tokens=8", "pipeline.eval_prompts=6",
        "pipeline.eval_seeds=2", "pipeline.bootstrap=100", "pipeline.checkpoint_every=1", "ray.num_cpus=4"]
TIMING = ("ppo/tokens_per_s", "ppo/samples_per_s", "ppo/update_time_s")


def _array_bytes(obj, seen=None) -> tuple[int, int]:
    """(bytes in torch tensors, bytes in numpy arrays) reachable from ``obj``."""
    import numpy as np
    import torch

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0, 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size(), 0
    if isinstance(obj, np.ndarray):
        return 0, obj.nbytes
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else \
        vars(obj).values() if hasattr(obj, "__dict__") and not isinstance(obj, type) else ()
    t = n = 0
    for x in items:
        a, b = _array_bytes(x, seen)
        t, n = t + a, n + b
    return t, n


# the reference run (TINY sizes, every driver-side ray.get watched) is the session fixture `reference` of
# tests/cluster/conftest.py, shared with test_pipeline_faults


def _final(report):
    """What must not change between an uninterrupted and a resumed/faulted run (timings excluded)."""
    ppo = [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("time/")} for r in report["ppo"]]
    return report["policies"], report["head_to_head"], ppo


def _copy_before_ppo(src: Path, dst: Path) -> None:
    """The run directory as it was when the reward stage had finished."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("ppo", "evaluate", "tb", "report.*"))
    state = json.loads((dst / "state.json").read_text())
    for s in ("ppo", "evaluate"):
        state["stages"].pop(s)
    state["ppo"] = {"step": 0, "checkpoint": None}
    (dst / "state.json").write_text(json.dumps(state))


def test_reference_run_writes_records_report_and_never_pulls_weights(reference):
    run_dir, report, received = reference
    state = json.loads((run_dir / "state.json").read_text())
    assert list(state["stages"]) == ["sft", "collect", "reward", "ppo", "evaluate"]
    assert state["ppo"]["step"] == 3 and state["ppo"]["checkpoint"] == "ppo/ckpt/step_000003"
    assert sorted(p.name for p in (run_dir / "ppo" / "ckpt").iterdir()) == ["step_000002", "step_000003"]
    for s in state["stages"]:
        rec = json.loads((run_dir / s / "record.json").read_text())
        assert rec["key"] == state["stages"][s]["key"] and rec["seconds"] > 0 and rec["config"]
    assert json.loads((run_dir / "reward" / "record.json").read_text())["inputs"]["data"] == \
        json.loads((run_dir / "collect" / "record.json").read_text())["outputs"]["digest"]
    assert load_config(run_dir / "config.yaml").ppo.steps == 3
    # report.json in the schema; E[r] = label_pct . rewards / 100
    rewards = load_config(run_dir / "config.yaml").labels.rewards
    assert set(report["policies"]) == {"vanilla", "dprm_ot"}
    for p in report["policies"].values():
        assert abs(sum(p["label_pct"]) - 100) < 1e-6 and p["seeds"] == 2
        assert abs(p["expected_reward"] - sum(a * b for a, b in zip(p["label_pct"], rewards)) / 100) < 1e-9
    assert report["policies"]["vanilla"]["kl"] == 0.0
    h = report["head_to_head"]["dprm_ot_vs_vanilla"]
    assert set(h["per_persona"]) == {"scientist", "teacher", "politician", "teenager", "ceo", "artist"}
    assert set(report["stages"]) == {"sft", "collect", "reward", "ppo", "evaluate"}
    assert report["restarts"] == {"rollout": 0, "reward": 0, "learner": 0}
    assert len(report["ppo"]) == 3 and (run_dir / "report.md").is_file() and (run_dir / "report.png").is_file()
    # every PPO step is judged by the population too: an E[r] on the reward table's own scale
    pop = [r["population/expected_reward"] for r in report["ppo"]]
    assert all(min(rewards) <= p <= max(rewards) for p in pop) and len(set(pop)) > 1
    assert "The population's expected reward of the same rollouts" in (run_dir / "report.md").read_text()
    assert any((run_dir / "tb").iterdir())
    # the driver never received the policy's weights: the learner publishes, generators pull
    policy_bytes = sum(f.stat().st_size for f in (run_dir / "ppo" / "policy").glob("*.safetensors"))
    assert policy_bytes > 500_000 and len(received) > 10
    assert sum(t for t, _ in received) == 0, "a torch tensor reached the driver"
    assert max(n for _, n in received) < policy_bytes / 100


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return env


# The CLI run, SIGKILLed by itself right after PPO step 1 is recorded: polling state.json from
# outside raced the steps (tiny ones take well under the polling interval on an idle machine).
_KILLED_AFTER_STEP_1 = """
import os, signal, sys
from raydprm.cluster import pipeline
init = pipeline.Pipeline.__init__
def killed_after_step_1(self, *a, **k):
    init(self, *a, **k)
    self.on_step = lambda pipe, step: os.kill(os.getpid(), signal.SIGKILL) if step == 1 else None
pipeline.Pipeline.__init__ = killed_after_step_1
from raydprm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_ppo_then_resume_gives_the_same_final_metrics(reference, tmp_path):
    run_dir, report, _ = reference
    dst = tmp_path / "killed"
    _copy_before_ppo(run_dir, dst)
    args = ["run", "--no-progress", "--resume", str(dst)]
    killed = subprocess.run([sys.executable, "-c", _KILLED_AFTER_STEP_1, *args], env=_env(),
                            capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    state = json.loads((dst / "state.json").read_text())
    assert "ppo" not in state["stages"] and state["ppo"]["step"] == 1, state
    cmd = [sys.executable, "-m", "raydprm.cli", *args]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == str(dst)
    assert "sft: inputs unchanged" in done.stdout and "PPO resumes after step" in done.stdout
    resumed = json.loads((dst / "report.json").read_text())
    assert _final(resumed) == _final(report)


def test_grpo_run_has_no_value_head_and_resumes_after_sigkill_to_the_same_final_metrics(reference, tmp_path):
    """ppo.advantage=grpo on groups of rollout.n_per_prompt=4 responses (the reference's SFT, store and
    reward model): the learner holds the policy alone (no value head, so no critic optimizer state),
    and a run SIGKILLed after step 1 and resumed ends exactly as the same run left alone."""
    import torch

    from raydprm.cluster.pipeline import Pipeline

    grpo = ["ppo.advantage=grpo", "rollout.n_per_prompt=4"]
    alone, dst = tmp_path / "alone", tmp_path / "killed"
    for d in (alone, dst):
        _copy_before_ppo(reference[0], d)
    report = Pipeline(load_config(alone / "config.yaml", grpo), alone, progress=False).fit()
    engine = torch.load(alone / "ppo" / "ckpt" / "step_000003" / "engine" / "torch_engine.pt", weights_only=False)
    names = list(engine["module"])
    assert names and all(n.startswith("lm.") for n in names) and not any("value" in n for n in names)
    assert len(engine["optimizer"]["state"]) <= len(names)  # Adam moments of policy parameters only
    assert "ppo/value_loss" not in report["ppo"][0] and "ppo/policy_loss" in report["ppo"][0]
    killed = subprocess.run([sys.executable, "-c", _KILLED_AFTER_STEP_1, "run", "--no-progress", "--resume", str(dst),
                             *grpo], env=_env(), capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert json.loads((dst / "state.json").read_text())["ppo"]["step"] == 1
    done = subprocess.run([sys.executable, "-m", "raydprm.cli", "run", "--no-progress", "--resume", str(dst)],
                          env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PPO resumes after step 1" in done.stdout
    assert _final(json.loads((dst / "report.json").read_text())) == _final(report)


def test_killed_generator_is_restarted_with_current_weights_and_the_run_completes(reference, tmp_path):

    from raydprm.cluster.pipeline import Pipeline

    run_dir, report, _ = reference
    dst = tmp_path / "faulty"
    _copy_before_ppo(run_dir, dst)

    def kill_generator(pipe, step):
        if step == 1:
            kill_actor(pipe.rollout.group.actors[0])

    got = Pipeline(load_config(dst / "config.yaml"), dst, progress=False, on_step=kill_generator).fit()
    assert got["restarts"]["rollout"] == 1
    assert _final(got) == _final(report)  # the new replica got the current weights before serving


def test_preflight_names_missing_gpus_and_writes_nothing(tmp_path, capsys):
    rc = main(["run", "--no-progress", f"run.output_dir={tmp_path}", "run.name=gpu", "rollout.num_gpus=1",
               "ray.num_cpus=4"])
    err = capsys.readouterr().err.strip()
    # one error line, last; (a logging handler an earlier test left on a closed capture stream can
    # add "--- Logging error ---" noise from Ray's own start-up message when tests share a process)
    lines = err.splitlines()
    errors = [ln for ln in lines if ln.startswith("raydprm: error:")]
    assert rc == 2 and len(errors) == 1 and lines[-1] == errors[0], err
    # evaluate's two pools (SFT and tuned policy) sample side by side: 2 x rollout.num_gpus at the peak
    assert "GPU needs 2, the cluster has 0" in err and "pipeline.layout = split" in err
    assert not (tmp_path / "gpu").exists() or not any((tmp_path / "gpu").iterdir())


def test_fresh_run_refuses_a_non_empty_run_dir(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "state.json").write_text("{}")
    rc = main(["run", f"run.output_dir={tmp_path}", "run.name=x"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "--resume" in err and "run.name" in err


def test_relative_output_dir_inside_a_ray_job_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    rc = main(["run", "run.output_dir=runs", "run.name=job"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "run.output_dir = 'runs' is relative" in err and "Ray job" in err
    rc = main(["run", "--resume", str(tmp_path)])
    assert rc == 2 and "not a raydprm run directory" in capsys.readouterr().err
