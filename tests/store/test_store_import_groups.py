"""A store created by an import holds the import's groups only; a lone surrogate escape in a
JSON-lines file is refused in one line (pandas' reader would drop it silently)."""

import json

import numpy as np
import pandas as pd

from raydprm.cli import main
from raydprm.store import DEFAULT_STORE_PERSONAS, PreferenceStore
from tests.store.test_store_import import MAPPING, RACES, dices_rows, refused_import, write_dices


def test_a_store_created_by_an_import_has_only_the_imports_groups(tmp_path, capsys):
    f = write_dices(tmp_path / "dices.csv", dices_rows())
    db = tmp_path / "dices.db"
    assert main(["store", "import", "--db", str(db), "--file", str(f), "--preset", "dices"]) == 0
    with PreferenceStore(db, readonly=True) as s:
        assert sorted(s.personas) == sorted(RACES) and sorted(s.groups(with_votes=False)) == sorted(RACES)
        assert sorted(s.stats()["votes_per_persona"]) == sorted(RACES)
        ds = s.export()
        assert all(sorted(row) == sorted(RACES) for row in ds["persona_counts"])
    # an import into an existing store keeps what it has (its personas are its own)
    db2 = tmp_path / "sim.db"
    PreferenceStore(db2, labels=["safe", "unsure", "unsafe"]).close()
    m = json.loads(json.dumps(MAPPING))
    m["label"] = {"column": "Q_overall", "values": {"No": "safe", "Unsure": "unsure", "Yes": "unsafe"}}
    m.update(item={"prompt": "context", "response": "response"}, rater="rater_id", group="rater_race", scale=None)
    (tmp_path / "m.yaml").write_text(json.dumps({k: v for k, v in m.items() if v is not None}))
    assert main(["store", "import", "--db", str(db2), "--file", str(f), "--mapping", str(tmp_path / "m.yaml")]) == 0
    with PreferenceStore(db2, readonly=True) as s:
        assert s.personas == list(DEFAULT_STORE_PERSONAS) + [g for g in s.personas if g in RACES]
        assert sorted(s.groups()) == sorted(RACES)


def test_a_new_store_still_registers_the_simulated_crowd(tmp_path):
    with PreferenceStore(tmp_path / "s.db") as s:  # what the pipeline's collect stage relies on
        assert s.personas == list(DEFAULT_STORE_PERSONAS) and s.groups() == []


def test_a_lone_surrogate_escape_in_jsonl_is_refused_in_one_line(tmp_path, capsys):
    rows = [{"rater": f"r{i}", "g": "G", "p": f"prompt {i}", "r": "resp", "y": "a"} for i in range(5)]
    lines = [json.dumps(r) for r in rows]
    lines[3] = lines[3].replace('"resp"', '"re\\ud800sp"')  # a high surrogate without its low half
    lines[1] = lines[1].replace('"resp"', '"re\\ud83d\\ude00sp"')  # a valid pair (one emoji) is fine
    f = tmp_path / "x.jsonl"
    f.write_text("\n".join(lines) + "\n")
    db, mapping = refused_import(tmp_path, capsys, f, "row 4", "column 'r'", "surrogate")
    # without the lone surrogate the file imports, the emoji intact
    lines[3] = json.dumps(rows[3])
    f.write_text("\n".join(lines) + "\n")
    assert main(["store", "import", "--db", str(db), "--file", str(f), *mapping]) == 0
    with PreferenceStore(db, readonly=True) as s:
        assert s.counts("prompt 1", "re\U0001F600sp")["G"] == [1.0, 0.0]
        assert np.isclose(sum(s.distribution("prompt 3", "resp")), 1.0)
    assert pd.read_json(f, lines=True)["r"][1] == "re\U0001F600sp"
