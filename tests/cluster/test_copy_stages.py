"""copy_stages: a sweep trial seeds its run directory with another run's finished stages."""

import json

from raydprm.cluster.run_state import RunState, copy_stages


def _stage(run, name, outputs, key):
    (run / name).mkdir(parents=True, exist_ok=True)
    (run / name / "out.bin").write_bytes(name.encode())
    RunState(run).complete(name, key, inputs={}, config={}, outputs=outputs, started=0.0)


def test_copies_done_stages_in_order_with_the_files_their_outputs_name(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _stage(src, "sft", {"path": "sft"}, "k1")
    (src / "store.db").write_text("db")
    (src / "store.db-wal").write_text("wal")
    _stage(src, "collect", {"store": "store.db", "data": "collect/data", "votes": 3, "abs": "/etc"}, "k2")
    _stage(src, "ppo", {"policy": "ppo/policy"}, "k4")  # after a missing stage: not copied
    assert copy_stages(src, dst, ("sft", "collect", "reward", "ppo")) == ["sft", "collect"]
    assert (dst / "sft" / "out.bin").read_bytes() == b"sft" and (dst / "store.db-wal").read_text() == "wal"
    st = RunState(dst)
    assert st.done("sft", "k1") and st.done("collect", "k2") and st.record("reward") is None
    assert not (dst / "ppo").exists()
    assert set(json.loads((dst / "state.json").read_text())["stages"]) == {"sft", "collect"}
    assert not st.done("collect", "another key")  # the receiving run still checks its own key
