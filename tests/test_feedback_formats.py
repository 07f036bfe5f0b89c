"""Preference files: the real HH-RLHF and OpenAssistant files, TRL pairs, our own round trip, errors."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import rlhfkit
from rlhfkit.feedback.formats import export_records, ranking_pairs, read_preferences, write_preferences
from rlhfkit.feedback.store import FeedbackStore
from rlhfkit.files import UserError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH = DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
OASST = DATA / "oasst-en-100-trees.jsonl"


def _write(path: Path, records: list) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.skipif(not HH.is_file(), reason="../shared/data absent")
def test_real_hh_rlhf_file():
    recs = read_preferences(HH)
    assert len(recs) == 2312  # every pair of the harmless-base test split
    first = recs[0]
    assert first["meta"]["format"] == "hh" and len(first["responses"]) == 2
    msgs = first["meta"]["messages"]
    # the shared dialogue ends in a user turn; the responses are the final assistant turns
    assert msgs[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert msgs[-1] == {"role": "user", "content": "okay some of these do not have anything to do with pens"}
    assert first["responses"][0].startswith("No, sorry!  All of these involve a pen")
    assert not first["responses"][0].startswith(" ")
    assert sum(r["meta"].get("diverged_early", False) for r in recs) == 5  # the 5 pairs that differ before the end
    assert all("Human:" not in r["prompt"][:6] for r in recs)


@pytest.mark.skipif(not OASST.is_file(), reason="../shared/data absent")
def test_real_oasst_trees():
    recs = read_preferences(OASST)
    assert len(recs) == 212  # the ranked groups the data README promises
    sizes = Counter(len(r["responses"]) for r in recs)
    assert sizes == {3: 117, 2: 57, 4: 27, 6: 6, 5: 3, 9: 1, 8: 1}
    first = recs[0]
    assert first["prompt"] == "How can I find the best 401k plan for my needs?"
    assert first["meta"]["ranks"] == [0, 1, 2]
    assert first["responses"][0].startswith("The first step is to research your options.")  # rank 0 = best
    deeper = [r for r in recs if len(r["meta"]["messages"]) > 1]
    assert deeper and all(r["meta"]["messages"][-1]["role"] == "user" for r in recs)
    assert [m["role"] for m in deeper[0]["meta"]["messages"]][:3] == ["user", "assistant", "user"]


@pytest.mark.skipif(not HH.is_file(), reason="../shared/data absent")
def test_cli_import_export_real_files(tmp_path):
    run = tmp_path / "run"
    r = rlhfkit("feedback", "import", str(run), str(HH))
    assert "imported 2312 rankings" in r.stdout
    r = rlhfkit("feedback", "import", str(run), str(HH), "--format", "hh")
    assert "imported 0 rankings" in r.stdout and "2312 were already" in r.stdout
    rlhfkit("feedback", "export", str(run), "--out", str(tmp_path / "prefs.jsonl.gz"))
    back = read_preferences(tmp_path / "prefs.jsonl.gz")
    original = read_preferences(HH)
    assert len(back) == 2312 and back[0]["meta"]["format"] == "rlhfkit"
    assert [b["responses"] for b in back] == [o["responses"] for o in original]
    assert back[0]["meta"]["messages"] == original[0]["meta"]["messages"]
    assert back[0]["meta"]["source"] == "imported" and back[0]["annotator"] == "import:hh"


def test_hh_split_and_divergence(tmp_path):
    f = _write(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: Why did the owl...",
         "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant: No."},
        # diverges at the first reply: the rest of each dialogue is its response
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: Bye!",
         "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}])
    a, b = read_preferences(f)
    assert a["responses"] == ["Why did the owl...", "No."]
    assert a["meta"]["messages"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                     {"role": "user", "content": "A joke?"}]
    assert a["prompt"] == "User: Hi\n\nAssistant: Hello!\n\nUser: A joke?"
    assert b["prompt"] == "Hi" and b["responses"] == ["Hello!\n\nHuman: Bye\n\nAssistant: Bye!", "Go away."]
    assert b["meta"]["diverged_early"] and not a["meta"].get("diverged_early")


def test_trl_strings_messages_and_implicit_prompt(tmp_path):
    f = _write(tmp_path / "trl.jsonl", [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "assistant", "content": "Bye"}]}])
    a, b = read_preferences(f)
    assert (a["prompt"], a["responses"], a["meta"]["format"]) == ("2+2?", ["4", "5"], "trl")
    assert (b["prompt"], b["responses"]) == ("Hi", ["Hello", "Bye"])
    implicit = _write(tmp_path / "implicit.jsonl", [
        {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
         "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}]}])
    (c,) = read_preferences(implicit)
    assert (c["prompt"], c["responses"]) == ("Q", ["good", "bad"])


def test_oasst_flat_messages(tmp_path):
    f = _write(tmp_path / "flat.jsonl", [
        {"message_id": "a", "parent_id": None, "role": "prompter", "text": "Name a bird", "message_tree_id": "a"},
        {"message_id": "b", "parent_id": "a", "role": "assistant", "text": "Owl", "rank": 1},
        {"message_id": "c", "parent_id": "a", "role": "assistant", "text": "Pelican", "rank": 0},
        {"message_id": "d", "parent_id": "a", "role": "assistant", "text": "unranked"},
        {"message_id": "e", "parent_id": "a", "role": "assistant", "text": "gone", "rank": 2, "deleted": True}])
    (r,) = read_preferences(f, format="oasst")
    assert r["prompt"] == "Name a bird" and r["responses"] == ["Pelican", "Owl"]


def test_rlhfkit_round_trip_and_pairs(tmp_path):
    rankings = [
        {"prompt": "p", "responses": ["A", "B", "C"], "annotator": "ann", "source": "human", "all_bad": False,
         "tie": False, "kind": "rank", "models": ["m"] * 3, "seconds": 2.0, "task_id": 1, "created_at": "t",
         "meta": {"messages": [{"role": "user", "content": "p"}]}},
        {"prompt": "q", "responses": ["X", "Y"], "annotator": "bo", "source": "arena", "all_bad": False, "tie": True,
         "kind": "arena", "models": ["m1", "m2"], "seconds": None, "task_id": 2, "created_at": "t", "meta": {}}]
    assert ranking_pairs(["A", "B", "C"]) == [("A", "B"), ("A", "C"), ("B", "C")]  # K(K-1)/2 = 3
    pairs = export_records(rankings, pairs=True)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("A", "B"), ("A", "C"), ("B", "C")]  # ties: no pairs
    write_preferences(export_records(rankings), tmp_path / "r.jsonl")
    back = read_preferences(tmp_path / "r.jsonl")
    assert [b["responses"] for b in back] == [["A", "B", "C"], ["X", "Y"]]
    assert back[1]["tie"] and back[1]["kind"] == "arena" and back[1]["meta"]["models"] == ["m1", "m2"]
    write_preferences(pairs, tmp_path / "pairs.jsonl.gz")
    as_trl = read_preferences(tmp_path / "pairs.jsonl.gz")
    assert as_trl[0]["meta"]["format"] == "trl" and as_trl[2]["responses"] == ["B", "C"]
    with FeedbackStore.for_run(tmp_path / "run") as store:  # the store keeps what the file said
        store.import_rankings(back)
        rows = store.rankings()
        assert rows[0]["annotator"] == "ann" and rows[1]["models"] == ["m1", "m2"] and rows[1]["tie"]


def test_errors_name_file_and_line(tmp_path):
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "y"}, "{not json"])
    with pytest.raises(UserError, match=r"bad.jsonl:2: malformed JSON"):
        read_preferences(bad)
    bad_gz = _write(tmp_path / "bad.jsonl.gz", [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b"}])
    with pytest.raises(UserError, match=r"bad.jsonl.gz:2: not a trl record \(missing 'chosen', 'rejected'"):
        read_preferences(bad_gz)
    with pytest.raises(UserError, match=r"odd.jsonl:1: cannot tell the format"):
        read_preferences(_write(tmp_path / "odd.jsonl", [{"text": "hi"}]))
    with pytest.raises(UserError, match=r"short.jsonl:1: 'responses' must be a list of at least 2"):
        read_preferences(_write(tmp_path / "short.jsonl", [{"prompt": "p", "responses": ["one"]}]))
    with pytest.raises(UserError, match=r"noprefix.jsonl:1: .*share no"):
        read_preferences(_write(tmp_path / "noprefix.jsonl", [{"chosen": "abc", "rejected": "xyz"}]))
    with pytest.raises(UserError, match="file not found"):
        read_preferences(tmp_path / "missing.jsonl")
    r = rlhfkit("feedback", "import", str(tmp_path / "run"), str(bad), check=False)
    assert r.returncode == 2 and "bad.jsonl:2: malformed JSON" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_oasst_rank_must_be_a_whole_number(tmp_path):
    flat = _write(tmp_path / "flat.jsonl", [
        {"message_id": "a", "parent_id": None, "role": "prompter", "text": "Name a bird", "message_tree_id": "a"},
        {"message_id": "c", "parent_id": "a", "role": "assistant", "text": "Pelican", "rank": 0},
        {"message_id": "b", "parent_id": "a", "role": "assistant", "text": "Owl", "rank": "first"}])
    with pytest.raises(UserError, match=r"flat.jsonl:3: OASST message 'b': 'rank' must be a whole number >= 0.*'first'"):
        read_preferences(flat)
    tree = _write(tmp_path / "tree.jsonl", [{"message_tree_id": "t", "prompt": {
        "message_id": "p", "role": "prompter", "text": "Hi", "replies": [
            {"message_id": "x", "role": "assistant", "text": "Hello", "rank": 0},
            {"message_id": "y", "role": "assistant", "text": "Hey", "rank": -1}]}}])
    with pytest.raises(UserError, match=r"tree.jsonl:1: OASST message 'y': 'rank' must be .* got -1"):
        read_preferences(tree)


def test_repeated_responses_are_refused(tmp_path):
    ok = {"prompt": "p", "responses": ["A", "B", "C"]}
    dup = _write(tmp_path / "dup.jsonl", [ok, {"prompt": "q", "responses": ["A", "B", "A"]}])
    with pytest.raises(UserError, match=r"dup.jsonl:2: the ranking lists the same response twice \(places 1 and 3"):
        read_preferences(dup)
    same = _write(tmp_path / "same.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "x"},
                                            {"prompt": "b", "chosen": "y", "rejected": "y"}])
    with pytest.raises(UserError, match=r"same.jsonl:1: every pair has chosen == rejected \(all 2 records"):
        read_preferences(same)
    # a lone identical pair among real ones (HH-RLHF has a few) is kept: it is in the data
    mixed = _write(tmp_path / "mixed.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "x"},
                                              {"prompt": "b", "chosen": "good", "rejected": "bad"}])
    assert [r["responses"] for r in read_preferences(mixed)] == [["x", "x"], ["good", "bad"]]
    r = rlhfkit("feedback", "import", str(tmp_path / "run"), str(same), check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "same.jsonl:1:" in r.stderr
    assert not (tmp_path / "run" / "feedback.db").exists() or FeedbackStore.for_run(tmp_path / "run").counts()[
        "rankings"] == 0
