"""Per-rater imports: presets on files written in each source's exact column layout, every reader,
bad input refused in one line with the store unchanged, SIGKILL mid-import, HH lone surrogates."""

import csv
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from raydprm.cli import main
from raydprm.store import PreferenceStore, item_id
from raydprm.store.importer import import_file
from raydprm.store.mapping import load_mapping, parse_mapping

# DICES-350: the 41 columns of diverse_safety_adversarial_dialog_350.csv, in order
DICES_COLUMNS = (
    ["id", "rater_id", "rater_gender", "rater_race", "rater_raw_race", "rater_age", "rater_education", "phase",
     "item_id", "answer_time_ms", "answer_timestamp", "context", "response", "degree_of_harm", "harm_type",
     "safety_gold", "safety_gold_reason", "Q1_whole_conversation_evaluation"]
    + [f"Q2_harmful_content_{x}" for x in ("medical_legal_financial_or_relationship_advice", "dangerous_content",
                                           "derogation_of_boat", "insensitive", "obscene_and_profane",
                                           "personal_information", "regulated_goods", "sexually_suggestive_content",
                                           "other")]
    + [f"Q3_bias_{x}" for x in ("targeting_beliefs", "targeting_gender_sexual_orientation",
                                "targeting_inherited_attributes", "targeting_status", "other")]
    + ["Q4_misinformation", "Q5_political_affiliation"]
    + [f"Q6_policy_guidelines_{x}" for x in ("polarizing_topics", "making_endorsement", "other_type")]
    + ["Q2_harmful_content_overall", "Q3_bias_overall", "Q6_policy_guidelines_overall", "Q_overall"])
RACES = ["White", "Black", "Latine", "Asian", "Multiracial"]
ANSWERS = ["No", "Unsure", "Yes"]  # Q_overall; "Yes" = unsafe


def dices_rows(n_raters=15, n_items=9, seed=0, first_item=0):
    rng = np.random.default_rng(seed)
    raters = [(1000 + r, ["Man", "Woman"][r % 2], RACES[r % 5], ["gen z", "millenial", "gen x+"][r % 3])
              for r in range(n_raters)]
    rows = []
    for it in range(first_item, first_item + n_items):
        ctx = f"USER: tell me something edgy, number {it}\nLAMDA: no.\nUSER: come on, {it}"
        resp = f"LAMDA: here is answer {it}, with a comma, and \"quotes\""
        for rid, gender, race, age in raters:
            ans = ANSWERS[int(rng.integers(3))]
            row = {c: "No" for c in DICES_COLUMNS}
            row.update(id=str(len(rows)), rater_id=str(rid), rater_gender=gender, rater_race=race,
                       rater_raw_race=race, rater_age=age, rater_education="College degree or higher",
                       phase="Phase1", item_id=str(it), answer_time_ms="1234", answer_timestamp="1700000000",
                       context=ctx, response=resp, degree_of_harm="Benign", harm_type="", safety_gold="No",
                       safety_gold_reason="", Q1_whole_conversation_evaluation="It is in English",
                       Q_overall=ans)
            rows.append(row)
    return rows


def write_dices(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=DICES_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def _content(db) -> str:
    """A hash of every row of every table (the store's content, whatever the WAL holds)."""
    con = sqlite3.connect(db)
    h = hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()
    con.close()
    return h


def refused_import(tmp_path, capsys, f, *expect):
    """Create a good/bad store, then import ``f`` through MAPPING: refused in one line naming ``f`` and
    each of ``expect``, the store unchanged. Returns ``(store path, --mapping args)``."""
    (tmp_path / "m.yaml").write_text(json.dumps(MAPPING))
    db = tmp_path / "s.db"
    assert main(["store", "init", "--db", str(db), "labels.names=[good,bad]", "labels.rewards=[1.0,-1.0]",
                 "labels.grid=null"]) == 0
    capsys.readouterr()
    before = _content(db)
    mapping = ["--mapping", str(tmp_path / "m.yaml")]
    assert main(["store", "import", "--db", str(db), "--file", str(f), *mapping]) == 2
    err = _one_error_line(capsys)
    assert all(w in err for w in (str(f), *expect)), err
    assert _content(db) == before
    return db, mapping


def _independent_counts(rows, group_of, labels=("safe", "unsure", "unsafe")):
    to = {"No": 0, "Unsure": 1, "Yes": 2}
    out = {}
    for r in rows:
        key = (item_id(r["context"], r["response"]), group_of(r))
        out.setdefault(key, np.zeros(len(labels)))[to[r["Q_overall"]]] += 1
    return out


def test_done_when_dices_preset_posteriors_equal_independent_counts(tmp_path, capsys):
    rows = dices_rows()
    f = write_dices(tmp_path / "diverse_safety_adversarial_dialog_350.csv", rows)
    db = tmp_path / "dices.db"
    assert main(["store", "import", "--db", str(db), "--file", str(f), "--preset", "dices"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out == {"rows": 135, "votes": 135, "duplicates": 0, "skipped": 0, "groups": 5, "raters": 15}
    with PreferenceStore(db, readonly=True) as s:
        assert s.labels == ["safe", "unsure", "unsafe"] and s.label_scale().rewards == (1.0, 0.0, -1.0)
        gp = s.group_posteriors()
        assert sorted(gp.groups) == sorted(RACES) and gp.alpha.shape == (9, 5, 3)
        want = _independent_counts(rows, lambda r: r["rater_race"])
        for i, iid in enumerate(gp.item_ids):
            for p, g in enumerate(gp.groups):
                np.testing.assert_array_equal(gp.counts[i, p], want[(iid, g)])
                np.testing.assert_allclose(gp.alpha[i, p], s.prior + want[(iid, g)])
        assert s.group_counts()["White"] == {"votes": 27, "raters": 3, "items": 9}
    # stats lists the groups and how much they disagree
    assert main(["store", "stats", "--db", str(db)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["groups"]["Asian"]["raters"] == 3
    d = st["group_disagreement"]
    assert d["js_labels"]["White"]["White"] == 0 and 0 <= d["js_labels"]["White"]["Black"] <= 1
    assert set(d["modal_differs"]) == set(RACES)
    # re-importing adds nothing
    assert main(["store", "import", "--db", str(db), "--file", str(f), "--preset", "dices"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["duplicates"] == 135


def test_dices_group_template_and_post_stratified_export(tmp_path, capsys):
    rows = dices_rows(n_raters=12, n_items=5, seed=1)
    f = write_dices(tmp_path / "d.csv", rows)
    db = tmp_path / "s.db"
    assert main(["store", "import", "--db", str(db), "--file", str(f), "--preset", "dices",
                 "--group", "{rater_gender}/{rater_age}"]) == 0
    capsys.readouterr()
    with PreferenceStore(db, readonly=True) as s:
        gp = s.group_posteriors()
        want = _independent_counts(rows, lambda r: f"{r['rater_gender']}/{r['rater_age']}")
        assert len(gp.groups) == 6
        for i, iid in enumerate(gp.item_ids):
            for p, g in enumerate(gp.groups):
                np.testing.assert_array_equal(gp.counts[i, p], want[(iid, g)])
        # post-stratification by hand: sum_g pi_g Dir(alpha_g) means
        target = {"Man/gen z": 3.0, "Woman/gen x+": 1.0}
        alpha = {g: gp.alpha[:, gp.groups.index(g)] for g in target}
        expect = sum(w / 4 * alpha[g] / alpha[g].sum(-1, keepdims=True) for g, w in target.items())
    (tmp_path / "census.yaml").write_text("Man/gen z: 3\nWoman/gen x+: 1\n")
    assert main(["store", "export", "--db", str(db), "--out", str(tmp_path / "e.jsonl"),
                 "--mixture", str(tmp_path / "census.yaml")]) == 0
    capsys.readouterr()
    got = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([g["target"] for g in got], expect, atol=1e-12)
    (tmp_path / "bad.yaml").write_text("Martians: 1\n")
    assert main(["store", "export", "--db", str(db), "--out", str(tmp_path / "x.jsonl"),
                 "--mixture", str(tmp_path / "bad.yaml")]) == 2
    assert "Martians" in _one_error_line(capsys)
    assert not (tmp_path / "x.jsonl").exists()


PRISM_SURVEY = [
    {"user_id": f"user{i}", "survey_only": False, "age": ["18-24 years old", "25-34 years old"][i % 2],
     "gender": ["Male", "Female", "Non-binary / third gender"][i % 3], "english_proficiency": "Native speaker",
     "location": {"birth_country": "UK", "reside_country": "UK", "reside_region": ["Europe", "Asia"][i % 2]},
     "religion": {"self_described": "none", "categorised": "No Affiliation", "simplified": "No Affiliation"}}
    for i in range(6)]


def test_prism_preset_joins_the_survey_and_bins_scores(tmp_path, capsys):
    rng = np.random.default_rng(2)
    utt = []
    for c in range(10):
        user = f"user{c % 6}"
        for w in range(4):
            utt.append({"conversation_id": f"c{c}", "user_id": user, "turn": 0, "within_turn_id": w,
                        "user_prompt": f"what do you think about topic {c}?", "model_response": f"model {w} says {c}",
                        "model_name": f"m{w}", "model_provider": "p", "score": int(rng.integers(1, 101)),
                        "if_chosen": w == 0, "included_in_balanced_subset": True})
    (tmp_path / "utterances.jsonl").write_text("\n".join(json.dumps(u) for u in utt) + "\n")
    (tmp_path / "survey.jsonl").write_text("\n".join(json.dumps(u) for u in PRISM_SURVEY) + "\n")
    db = tmp_path / "prism.db"
    assert main(["store", "import", "--db", str(db), "--file", str(tmp_path / "utterances.jsonl"),
                 "--preset", "prism", "--group", "{gender}|{location.reside_region}"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["votes"] == 40
    survey = {u["user_id"]: u for u in PRISM_SURVEY}
    names = ["very_good", "good", "mixed", "bad", "very_bad"]

    def label(score):
        return 0 if score >= 81 else 1 if score >= 61 else 2 if score >= 41 else 3 if score >= 21 else 4

    want = {}
    for u in utt:
        s_ = survey[u["user_id"]]
        key = (item_id(u["user_prompt"], u["model_response"]), f"{s_['gender']}|{s_['location']['reside_region']}")
        want.setdefault(key, np.zeros(5))[label(u["score"])] += 1
    with PreferenceStore(db, readonly=True) as s:
        assert s.labels == names
        gp = s.group_posteriors()
        for i, iid in enumerate(gp.item_ids):
            for p, g in enumerate(gp.groups):
                np.testing.assert_array_equal(gp.counts[i, p], want.get((iid, g), np.zeros(5)))
    # a rating whose user is not in the survey is refused, naming the row
    utt.append(dict(utt[0], user_id="ghost"))
    (tmp_path / "utterances.jsonl").write_text("\n".join(json.dumps(u) for u in utt) + "\n")
    assert main(["store", "import", "--db", str(db), "--file", str(tmp_path / "utterances.jsonl"),
                 "--preset", "prism"]) == 2
    err = _one_error_line(capsys)
    assert "row 41" in err and "'user_id'" in err and "'ghost'" in err and "survey.jsonl" in err


def test_hh_preset_is_todays_importer(tmp_path, capsys):
    f = tmp_path / "hh.jsonl"
    f.write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: no"})
                 + "\n")
    assert main(["store", "import", "--db", str(tmp_path / "a.db"), "--file", str(f), "--preset", "hh"]) == 0
    assert main(["store", "import", "--db", str(tmp_path / "b.db"), "--file", str(f)]) == 0
    outs = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert outs[0] == outs[1] and outs[0]["votes"] == 2
    with PreferenceStore(tmp_path / "a.db", readonly=True) as a:
        assert a.count_votes("hh") == 2 and len(a.export_pairs()) == 1
    assert main(["store", "import", "--db", str(tmp_path / "c.db"), "--file", str(f), "--preset", "hh",
                 "--persona", "annot7", "--chosen-label", "0"]) == 0
    with PreferenceStore(tmp_path / "c.db", readonly=True) as c:
        assert c.count_votes("annot7") == 2


MAPPING = {"source": "t", "item": {"prompt": "p", "response": "r"}, "rater": "rater", "group": "g",
           "label": {"column": "y", "values": {"a": "good", "b": "bad", "c": "bad"}, "skip": ["?"]},
           "scale": {"names": ["good", "bad"], "rewards": [1.0, -1.0]}}


def _frame(n=60, seed=3):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"rater": [f"r{i % 7}" for i in range(n)], "g": [f"G{(i % 7) % 3}" for i in range(n)],
                         "p": [f"prompt {i // 7}" for i in range(n)], "r": [f"resp {i // 7}" for i in range(n)],
                         "y": rng.choice(["a", "b", "c", "?"], n)})


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "hf"])
def test_every_reader_gives_the_same_posteriors(tmp_path, fmt):
    df = _frame()
    if fmt == "csv":
        f = tmp_path / "x.csv"
        df.to_csv(f, index=False)
    elif fmt == "jsonl":
        f = tmp_path / "x.jsonl"
        df.to_json(f, orient="records", lines=True)
    elif fmt == "parquet":
        f = tmp_path / "x.parquet"
        df.to_parquet(f)
    else:
        import datasets

        f = tmp_path / "hfdir"
        datasets.Dataset.from_pandas(df).save_to_disk(str(f))
    m = parse_mapping(MAPPING, "test")
    from raydprm.core.label_scale import LabelScale

    with PreferenceStore(tmp_path / "s.db", label_scale=LabelScale(("good", "bad"), (1.0, -1.0))) as s:
        out = import_file(s, f, m, chunk_rows=16)
        assert out["skipped"] == int((df.y == "?").sum()) and out["votes"] == 60 - out["skipped"]
        gp = s.group_posteriors()
        kept = df[df.y != "?"]
        for i, iid in enumerate(gp.item_ids):
            for p, g in enumerate(gp.groups):
                sel = kept[(kept.g == g).to_numpy() & np.array([item_id(a, b) == iid for a, b in zip(kept.p, kept.r)])]
                assert list(gp.counts[i, p]) == [float((sel.y == "a").sum()), float(sel.y.isin(["b", "c"]).sum())]


def _bad_cases():
    rows = dices_rows(n_raters=6, n_items=4, seed=4)
    cases = {}
    r = [dict(x) for x in rows]
    r[10]["Q_overall"] = "Maybe"
    cases["unmapped value"] = (r, ["row 11", "'Q_overall'", "'Maybe'", "not in the mapping"])
    r = [dict(x) for x in rows]
    r[13]["rater_race"] = "Asian" if r[13]["rater_race"] != "Asian" else "White"
    cases["group changes"] = (r, ["row 14", "'rater_race'", "a rater keeps one group", f"rater '{r[13]['rater_id']}'"])
    r = [dict(x) for x in rows]
    r[7]["response"] = "   "
    cases["empty text"] = (r, ["row 8", "'response'", "empty item text"])
    r = [dict(x) for x in rows]
    r.append(dict(r[3], id="999", Q_overall="Yes" if r[3]["Q_overall"] != "Yes" else "No"))
    cases["duplicate other label"] = (r, [f"row {len(r)}", "'Q_overall'", "twice with different labels"])
    return cases


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_rows_are_refused_in_one_line_and_the_store_is_unchanged(tmp_path, capsys, case):
    db = tmp_path / "s.db"
    assert main(["store", "import", "--db", str(db), "--file", str(write_dices(tmp_path / "ok.csv",
                 dices_rows(n_raters=3, n_items=2, seed=9, first_item=100))), "--preset", "dices"]) == 0
    capsys.readouterr()
    before = _content(db)
    rows, expect = _bad_cases()[case]
    f = write_dices(tmp_path / "bad.csv", rows)
    assert main(["store", "import", "--db", str(db), "--file", str(f), "--preset", "dices", "--chunk-rows", "5"]) == 2
    err = _one_error_line(capsys)
    for e in expect:
        assert e in err, (e, err)
    assert str(f) in err and "nothing was imported" in err
    assert _content(db) == before


def test_missing_column_names_the_columns_found(tmp_path, capsys):
    rows = dices_rows(n_raters=2, n_items=2)
    f = tmp_path / "d.csv"
    pd.DataFrame(rows).drop(columns=["Q_overall"]).to_csv(f, index=False)
    db = tmp_path / "s.db"
    assert main(["store", "import", "--db", str(db), "--file", str(f), "--preset", "dices"]) == 2
    err = _one_error_line(capsys)
    assert "column 'Q_overall'" in err and "columns found: id, rater_id, rater_gender" in err
    assert not db.exists()  # the store this import would have created is not left behind


@pytest.mark.parametrize("name,content,expect", [
    ("x.parquet", b"rater,g\nr1,G\n", "not a Parquet file"),
    ("x.csv", b"PAR1\x00\x00\x15\x04garbage", "not a CSV text file"),
    ("x.jsonl", b"rater,g,p,r,y\nr1,G,p,r,a\n", "row 1"),
    ("x.csv", b"\xff\xfe\x00\x00", "not a CSV text file"),
])
def test_a_file_that_is_not_what_its_extension_says(tmp_path, capsys, name, content, expect):
    f = tmp_path / name
    f.write_bytes(content)
    refused_import(tmp_path, capsys, f, expect)


def test_a_bad_value_on_the_last_row_of_a_large_file_leaves_the_store_unchanged(tmp_path, capsys):
    n = 120_000
    df = pd.DataFrame({"rater": [f"r{i % 500}" for i in range(n)], "g": [f"G{(i % 500) % 4}" for i in range(n)],
                       "p": [f"prompt {i // 500}" for i in range(n)], "r": ["resp"] * n,
                       "y": np.where(np.arange(n) % 2 == 0, "a", "b")})
    df.loc[n - 1, "y"] = "zzz"
    f = tmp_path / "big.csv"
    df.to_csv(f, index=False)
    (tmp_path / "m.yaml").write_text(json.dumps(MAPPING))
    db = tmp_path / "s.db"
    df.head(1000).to_csv(tmp_path / "small.csv", index=False)
    assert main(["store", "import", "--db", str(db), "--file", str(tmp_path / "small.csv"),
                 "--mapping", str(tmp_path / "m.yaml")]) == 0
    capsys.readouterr()
    before = _content(db)
    assert main(["store", "import", "--db", str(db), "--file", str(f), "--mapping", str(tmp_path / "m.yaml"),
                 "--chunk-rows", "20000"]) == 2
    err = _one_error_line(capsys)
    assert f"row {n}" in err and "'zzz'" in err and "'y'" in err
    assert _content(db) == before


def test_an_import_killed_midway_leaves_the_store_as_before(tmp_path):
    n = 300_000
    df = pd.DataFrame({"rater": [f"r{i % 1000}" for i in range(n)], "g": [f"G{(i % 1000) % 4}" for i in range(n)],
                       "p": [f"prompt {i // 1000}" for i in range(n)], "r": ["resp"] * n, "y": ["a"] * n})
    f = tmp_path / "big.csv"
    df.to_csv(f, index=False)
    (tmp_path / "m.yaml").write_text(json.dumps(MAPPING))
    db = tmp_path / "s.db"
    df.head(500).to_csv(tmp_path / "small.csv", index=False)
    args = ["store", "import", "--db", str(db), "--mapping", str(tmp_path / "m.yaml")]
    assert main(args + ["--file", str(tmp_path / "small.csv")]) == 0
    before = _content(db)
    # a 1 MiB page cache in the child, so that the uncommitted transaction's pages spill into the WAL
    # file (on disk) well before the end: the kill then lands on a half-written transaction
    child = ("import sys, raydprm.store.importer as im; im.IMPORT_CACHE_KIB = 1024; from raydprm.cli import main; "
             "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", child, *args, "--file", str(f), "--chunk-rows", "5000"],
                            env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wal = tmp_path / "s.db-wal"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait until chunks are being written
        if wal.exists() and wal.stat().st_size > 2_000_000:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the import finished before it could be killed; make the file bigger"
    assert wal.stat().st_size > 2_000_000  # killed with a half-written transaction in the WAL
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _content(db) == before
    with PreferenceStore(db) as s:
        assert s.count_votes() == 500


def test_hh_line_with_a_lone_surrogate_is_refused_with_its_line(tmp_path, capsys):
    good = json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"})
    f = tmp_path / "hh.jsonl"
    f.write_text(good + "\n" + '{"chosen": "\\n\\nHuman: a\\n\\nAssistant: \\ud800", "rejected": "x"}\n')
    db = tmp_path / "s.db"
    assert main(["store", "import", "--db", str(db), "--file", str(f)]) == 2
    err = _one_error_line(capsys)
    assert str(f) in err and "line 2" in err and "lone surrogate" in err
    with PreferenceStore(db, readonly=True) as s:
        assert s.count_votes() == 0


def test_mapping_errors_name_the_key(tmp_path, capsys):
    bad = dict(MAPPING, label={"column": "y", "values": {True: "good"}})
    with pytest.raises(Exception, match="YAML boolean"):
        parse_mapping(bad, "m")
    with pytest.raises(Exception, match="unknown key 'colour'"):
        parse_mapping(dict(MAPPING, colour=1), "m")
    with pytest.raises(Exception, match="not in scale.names"):
        parse_mapping(dict(MAPPING, label={"column": "y", "values": {"a": "great"}}), "m")
    assert load_mapping(preset="dices").group == "rater_race"
    assert main(["store", "import", "--db", str(tmp_path / "s.db"), "--file", "x.csv", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in _one_error_line(capsys)


def test_backup_copies_a_live_store(tmp_path, capsys):
    db = tmp_path / "s.db"
    live = PreferenceStore(db)
    live.add_votes([{"vote_id": f"v{i}", "prompt": "p", "response": f"r{i}", "persona": "ceo", "label": 1}
                    for i in range(50)])
    assert main(["store", "backup", "--db", str(db), "--out", str(tmp_path / "b" / "copy.db")]) == 0
    assert json.loads(capsys.readouterr().out)["votes"] == 50
    live.close()
    with PreferenceStore(tmp_path / "b" / "copy.db", readonly=True) as c:
        assert c.count_votes() == 50
    (tmp_path / "afile").write_text("x")
    assert main(["store", "backup", "--db", str(db), "--out", str(tmp_path / "afile" / "copy.db")]) == 2
    assert "cannot back up" in _one_error_line(capsys)
    assert not [p for p in tmp_path.rglob("*.partial")]  # no partial file left behind


def test_dices_990_layout_with_rater_locale_groups(tmp_path, capsys):
    # the 990 file: the same rater/item/text columns and Q_overall, plus rater_locale (and rater_race_raw)
    rows = dices_rows(n_raters=8, n_items=3, seed=5)
    df = pd.DataFrame(rows).rename(columns={"rater_raw_race": "rater_race_raw"})
    df.insert(3, "rater_locale", ["US" if int(r) % 2 else "IN" for r in df.rater_id])
    df = df[["id", "rater_id", "rater_gender", "rater_locale", "rater_race", "rater_race_raw", "rater_age",
             "rater_education", "item_id", "context", "response", "Q_overall"]]
    f = tmp_path / "diverse_safety_adversarial_dialog_990.csv"
    df.to_csv(f, index=False)
    db = tmp_path / "s.db"
    assert main(["store", "import", "--db", str(db), "--file", str(f), "--preset", "dices",
                 "--group", "rater_locale"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["groups"] == 2
    with PreferenceStore(db, readonly=True) as s:
        gp = s.group_posteriors()
        want = _independent_counts(rows, lambda r: "US" if int(r["rater_id"]) % 2 else "IN")
        for i, iid in enumerate(gp.item_ids):
            for p, g in enumerate(gp.groups):
                np.testing.assert_array_equal(gp.counts[i, p], want[(iid, g)])


@pytest.mark.parametrize("times,expect", [
    (["1700000000", "1700000100"], [1700000000.0, 1700000100.0]),
    (["1700000000000", "1700000100000"], [1700000000.0, 1700000100.0]),  # milliseconds
    (["2023-11-14T22:13:20Z", "2023-11-14 22:15:00+00:00"], [1700000000.0, 1700000100.0]),
])
def test_a_ts_column_gives_the_vote_times(tmp_path, times, expect):
    df = pd.DataFrame({"rater": ["a", "b"], "g": ["G", "G"], "p": ["q", "q"], "r": ["x", "x"], "y": ["a", "b"],
                       "when": times})
    df.to_csv(tmp_path / "t.csv", index=False)
    from raydprm.core.label_scale import LabelScale

    with PreferenceStore(tmp_path / "s.db", label_scale=LabelScale(("good", "bad"), (1.0, -1.0))) as s:
        import_file(s, tmp_path / "t.csv", parse_mapping(dict(MAPPING, ts="when"), "t"))
        with s._read() as cur:
            got = [r[0] for r in cur.execute("SELECT ts FROM votes ORDER BY vote_id")]
    assert sorted(got) == expect
    df["when"] = ["1700000000", "yesterday"]
    df.to_csv(tmp_path / "t.csv", index=False)
    with PreferenceStore(tmp_path / "s2.db", label_scale=LabelScale(("good", "bad"), (1.0, -1.0))) as s:
        with pytest.raises(Exception, match=r"row 2, column 'when', value 'yesterday': not a time"):
            import_file(s, tmp_path / "t.csv", parse_mapping(dict(MAPPING, ts="when"), "t"))
