"""The embedded synthetic world (rlhfkit.world) and the gold joke preference (rlhfkit.rewards.gold)."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from pathlib import Path

import pytest

from rlhfkit import world as W
from rlhfkit.cli import main
from rlhfkit.files import read_jsonl
from rlhfkit.rewards.gold import joke, joke_components

SCALE = 0.05
FILES = ("corpus.txt", "tokenizer.txt", "sft.jsonl", "sft_eval.jsonl", "chat.jsonl", "prompts_jokes.jsonl", "prompts_jokes_eval.jsonl",
         "prompts_math.jsonl", "prompts_math_eval.jsonl", "prompts_jokes_ood.jsonl", "prompts_math_ood.jsonl",
         "README.md")
# what a model trained on this world reads: the OOD files' animals and numbers must be absent
TRAINING_FILES = ("corpus.txt", "tokenizer.txt", "sft.jsonl", "sft_eval.jsonl", "chat.jsonl", "prompts_jokes.jsonl", "prompts_jokes_eval.jsonl",
                  "prompts_math.jsonl", "prompts_math_eval.jsonl")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w") / "world"
    paths = W.write_world(out, seed=0, scale=SCALE)
    assert sorted(paths) == sorted(FILES)
    return out


def test_same_seed_same_bytes(world, tmp_path):
    again = tmp_path / "again"
    W.write_world(again, seed=0, scale=SCALE)
    for name in FILES:
        assert (again / name).read_bytes() == (world / name).read_bytes(), name
    other = tmp_path / "other"
    W.write_world(other, seed=1, scale=SCALE)
    assert (other / "corpus.txt").read_bytes() != (world / "corpus.txt").read_bytes()


# sha256 of seed 0, scale 0.05: a refactor or a new file must leave these bytes alone. The
# prompt files are as recorded before world.py was split into modules; corpus.txt, sft.jsonl
# and sft_eval.jsonl were re-recorded when the demo's world was made joke- and arithmetic-heavy
# (CORPUS_MIX, the SFT mix, worked two-digit answers, 45% good SFT jokes, two told jokes an animal)
RECORDED_SHA256 = {
    "corpus.txt": "bf863ea4914f16ae8443ce3a9fb489d173cb2cbccae0f865702a2171b6a6eaeb",
    "sft.jsonl": "e75a57b55e415d270b4ec6a63329e9888f18a553173d6117e484451cc6fddf3f",
    "sft_eval.jsonl": "035335ce3f5cc5581f03f650b3089b367dddaa5ef14302a7d38170c8575dc5f2",
    "chat.jsonl": "7935f5a907cf60ab86fc585db32ed9a53ecc13c5f0a9c1b4465fad4a34dc1ffc",  # added with it: the others kept
    "prompts_jokes.jsonl": "5ada135535606c0a0829fe56a5f615b9e3ccd94a366427ca4826d0d409ac76cd",
    "prompts_jokes_eval.jsonl": "4316b431c70c75fe94148f79d25a7f4c73d7bde32398291a9b4b4c93c14c7e68",
    "prompts_math.jsonl": "7f1ff688416d57a13e09bbddda04eca1050de7d5885e30954c840ac8a91fbd7b",
    "prompts_math_eval.jsonl": "08c6c8bd01965db155fe0736f548e8b010f862e64db3f5d1794ddc6894a85ba5",
}


def test_bytes_match_the_recorded_hashes(world):
    for name, digest in RECORDED_SHA256.items():
        assert hashlib.sha256((world / name).read_bytes()).hexdigest() == digest, name


def test_corpus_is_plain_documents(world):
    text = (world / "corpus.txt").read_text(encoding="utf-8")
    assert 0.8 * 2_500_000 * SCALE < len(text) < 1.3 * 2_500_000 * SCALE
    docs = text.rstrip("\n").split("\n\n")
    assert all(doc.strip() and "\n\n" not in doc and doc == doc.strip() for doc in docs)
    assert "<|" not in text and '"role"' not in text  # plain text, no chat format
    # all four kinds are there
    assert any("Once upon a time" in d or "there was a" in d for d in docs)
    assert any(re.search(r"\d+ \+ \d+ = \d+", d) for d in docs)
    assert any("?" in d and "!" in d and "joke" in d.lower() for d in docs)
    assert any(d.startswith("Let us learn about") or "live" in d for d in docs)
    assert len(set(docs)) > 0.85 * len(docs)  # combinatorial, not one template repeated


def test_conversations_parse_and_end_with_assistant(world):
    for name, least in (("sft.jsonl", round(8000 * SCALE)), ("sft_eval.jsonl", round(400 * SCALE)),
                        ("chat.jsonl", round(6000 * SCALE))):
        convs = read_jsonl(world / name)
        assert len(convs) == least
        for c in convs:
            msgs = c["messages"]
            roles = [m["role"] for m in msgs]
            body = roles[1:] if roles[0] == "system" else roles
            # user, assistant, user, assistant, ... and never a system turn after the first
            assert body == ["user", "assistant"] * (len(body) // 2), roles
            assert all(isinstance(m["content"], str) and m["content"].strip() for m in msgs)
        assert any(len(c["messages"]) >= 4 for c in convs)  # some multi-turn
        assert any(c["messages"][0]["role"] == "system" for c in convs)
    train = {json.dumps(c, sort_keys=True) for c in read_jsonl(world / "sft.jsonl")}
    assert not any(json.dumps(c, sort_keys=True) in train for c in read_jsonl(world / "sft_eval.jsonl"))
    # pre-training's conversations are other draws: none is an SFT or an SFT-eval conversation
    sft_all = train | {json.dumps(c, sort_keys=True) for c in read_jsonl(world / "sft_eval.jsonl")}
    assert not any(json.dumps(c, sort_keys=True) in sft_all for c in read_jsonl(world / "chat.jsonl"))


def _pairs(text: str) -> set[tuple[int, int]]:
    """Unordered operand pairs written as `a op b`."""
    return {(min(int(a), int(b)), max(int(a), int(b))) for a, b in re.findall(r"(\d+) [+\-×] (\d+)", text)}


def test_math_answers_and_eval_pairs_held_out(world):
    evals = read_jsonl(world / "prompts_math_eval.jsonl")
    train = read_jsonl(world / "prompts_math.jsonl")
    eval_pairs = set()
    for rec in evals + train:
        x, y = map(int, re.findall(r"\d+", rec["prompt"]))
        op = "+" if ("+" in rec["prompt"] or "plus" in rec["prompt"]) else "-"
        assert rec["answer"] == str(x + y if op == "+" else x - y), rec
    for rec in evals:
        x, y = map(int, re.findall(r"\d+", rec["prompt"]))
        eval_pairs.add((min(x, y), max(x, y)))
    assert len(evals) == round(300 * SCALE) and len(eval_pairs) > 0.8 * len(evals)
    seen = _pairs((world / "corpus.txt").read_text(encoding="utf-8"))
    seen |= {(min(x, y), max(x, y)) for r in train for x, y in [map(int, re.findall(r"\d+", r["prompt"]))]}
    for c in read_jsonl(world / "sft.jsonl") + read_jsonl(world / "sft_eval.jsonl") + read_jsonl(world / "chat.jsonl"):
        for m in c["messages"]:
            seen |= _pairs(m["content"])
            nums = [int(n) for n in re.findall(r"\d+", m["content"])]
            if m["role"] == "user" and len(nums) == 2:  # "Subtract 9 from 15."
                seen.add((min(nums), max(nums)))
    assert len(seen) > 200  # the scan found the world's arithmetic, so the check below means something
    assert not eval_pairs & seen
    # SFT arithmetic answers end with "The answer is N." and N is right
    for c in read_jsonl(world / "sft.jsonl"):
        for u, a in zip(c["messages"][-2::-2], c["messages"][-1::-2]):
            m = re.search(r"(\d+) ([+\-×]) (\d+) = (\d+)\. The answer is (\d+)\.$", a["content"])
            if m and "Add the tens" not in a["content"] and "Take away" not in a["content"]:
                x, op, y, z, ans = m.groups()
                assert int(z) == int(ans) == W.OPS[op][1](int(x), int(y))


def test_joke_prompts_topics_and_held_out(world):
    train = read_jsonl(world / "prompts_jokes.jsonl")
    evals = read_jsonl(world / "prompts_jokes_eval.jsonl")
    for rec in train + evals:
        assert W.find_animal(rec["prompt"]) == rec["topic"], rec
    train_prompts = {r["prompt"] for r in train}
    assert not any(r["prompt"] in train_prompts for r in evals)
    held = {r["topic"] for r in evals} - {r["topic"] for r in train}
    assert held and held <= set(W.HELD_OUT_ANIMALS)
    corpus = (world / "corpus.txt").read_text(encoding="utf-8")
    sft_users = " ".join(m["content"] for c in read_jsonl(world / "sft.jsonl") for m in c["messages"] if m["role"] == "user")
    for name in held:
        assert W.mentions(corpus, name)  # the model has read about them...
        asks_joke = re.compile(rf"jokes?\b[^.?!]*\b{name}|{name}\w* joke", re.I)
        assert not asks_joke.search(sft_users)  # ...but was never asked for a joke about them


def test_sft_jokes_have_varied_quality(world):
    scores = []
    for c in read_jsonl(world / "sft.jsonl"):
        msgs = [m for m in c["messages"] if m["role"] != "system"]
        if "joke" in msgs[0]["content"].lower() and W.find_animal(msgs[0]["content"]):
            scores.append(joke(msgs[0]["content"], msgs[1]["content"]))
    good = sum(s > 0.99 for s in scores) / len(scores)
    assert len(scores) > 50
    assert 0.28 < good < 0.55, good  # ~45% good by design (a flawed joke never reaches 0.99... almost)
    assert sum(s < 0.6 for s in scores) / len(scores) > 0.25  # and plenty of clearly weak ones


def test_every_table_joke_is_good_and_literal_jokes_have_no_pun():
    for a in W.ANIMALS:
        for setup, punch in a.jokes:
            parts = joke_components(f"Tell me a joke about {a.plural}.", f"{setup} {punch}")
            assert parts["total"] == pytest.approx(1.0), (a.name, setup, parts)
        for setup, punch in W.LITERAL_JOKES:
            text = " ".join(x.format(s=a.name, p=a.plural, food=a.food, home=a.home) for x in (setup, punch))
            assert not W.has_pun(text, a.name), text


def test_pun_and_topic_matching():
    assert W.has_pun("In the porking lot!", "pig") and W.has_pun("Hip hop!", "rabbit")
    assert not W.has_pun("A hamster ran.", "pig")  # "ham" only as a word, not a prefix
    assert W.find_animal("Any jokes about mice? Or cats?") == "mouse"
    assert W.find_animal("Tell me a joke about sheep.") == "sheep"
    assert W.find_animal("Tell me a joke.") is None


PELICAN = "Tell me a joke about pelicans."
GOOD = "Why did the pelican get kicked out of the restaurant? It had a very big bill!"
FLAWED = {
    # 0.25 topic + 0.25 pun + 0.2 structure + 0.2 brevity + 0.1 ends, times no_repeat
    "off_topic": ("Why did the cow cross the road? To get to the udder side!", 0.5),  # no topic, no pun
    "no_pun": ("Why did the pelican cross the road? To get to the other side.", 0.75),
    "no_punchline": ("Why did the pelican get kicked out of the restaurant?", 0.65),  # structure 0.5, no pun
    "statement": ("A pelican has a long bill with a stretchy pouch.", 0.55),  # no question: pun does not count
    "truncated": ("Why did the pelican get kicked out of the restaurant? It had a very", 0.65),  # no pun, no end
    # 28 + 10 + 6 + 10 = 54 words: brevity (60 - 54) / 30 = 0.2 -> 0.8 + 0.2 * 0.2
    "rambling": ("Well, I know a lot of jokes, and I had to think for a while about which one to tell you, "
                 "because there are so many good ones. Why did the pelican get kicked out of the restaurant? "
                 "It had a very big bill! I hope that one made you smile today, my friend.", 0.84),
    # 12 + 7 = 19 words, 3 equal to the word before: no_repeat = 1 - 2 * 3/18 = 0.6667
    "repeated": ("Why did the the pelican get get kicked out of the restaurant? It had a very very big bill!", 0.6667),
}


def test_gold_ranks_good_above_each_flaw_and_the_the_lowest():
    assert joke(PELICAN, GOOD) == pytest.approx(1.0)
    scores = {}
    for name, (text, expected) in FLAWED.items():
        scores[name] = joke(PELICAN, text)
        assert scores[name] == pytest.approx(expected, abs=1e-3), name
        assert scores[name] < joke(PELICAN, GOOD), name
    the = joke(PELICAN, "the the the the the the the the")  # adjacent share 1 -> no_repeat 0
    assert the == 0.0 and the < min(scores.values())
    # a reward-hacker's loop: 20 trigrams, "big bill big" and "bill big bill" 3 times each,
    # so 4 repeats: no_repeat = 1 - 2.5 * 4/20 = 0.5
    looped = GOOD + " big bill! big bill! big bill!"
    assert joke(PELICAN, looped) == pytest.approx(0.5)
    # singular prompt, plural mention; prompt with no animal accepts any animal
    assert joke("Got a good pelican joke?", "Why are pelicans rich? They always pay the bill!") == pytest.approx(1.0)
    assert joke("Tell me a joke.", "Where do cows go on a Friday night? To the moo-vies!") == pytest.approx(1.0)


def test_joke_components_parts():
    parts = joke_components(PELICAN, FLAWED["no_punchline"][0])
    assert parts == {"topic": 1.0, "pun": 0.0, "structure": 0.5, "brevity": 1.0, "ends_cleanly": 1.0,
                     "no_repeat": 1.0, "total": pytest.approx(0.65)}
    assert joke_components(PELICAN, "")["total"] == 0.0  # no words: every part but no_repeat is 0


def test_gold_importable_by_string_path():
    module, _, attr = "rlhfkit.rewards.gold:joke".partition(":")
    fn = getattr(importlib.import_module(module), attr)
    assert fn(PELICAN, GOOD) == pytest.approx(1.0)


def test_cli_writes_and_refuses_foreign_directory(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["world", str(out), "--seed", "3", "--scale", "0.01"]) == 0
    assert (out / "README.md").is_file() and "seed 3" in (out / "README.md").read_text()
    assert main(["world", str(out), "--seed", "4", "--scale", "0.01"]) == 0  # rewrites its own directory
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["world", str(foreign), "--scale", "0.01"]) == 2
    assert "not a world directory" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert main(["world", str(tmp_path / "x"), "--scale", "0"]) == 2


def test_ood_prompts_name_only_what_no_training_file_has(world):
    jokes = read_jsonl(world / "prompts_jokes_ood.jsonl")
    maths = read_jsonl(world / "prompts_math_ood.jsonl")
    assert len(jokes) == len(maths) == round(300 * SCALE)
    ood = {a.name for a in W.OOD_ANIMALS}
    assert {r["topic"] for r in jokes} <= ood and len({r["topic"] for r in jokes}) >= 3
    for r in jokes:
        assert W.find_animal(r["prompt"]) == r["topic"], r
    training = {name: (world / name).read_text(encoding="utf-8") for name in TRAINING_FILES}
    for name, text in training.items():
        for a in W.OOD_ANIMALS:
            # "\bkangaroo" catches kangaroo, kangaroos, kangaroo's
            assert not re.search(rf"\b{a.name}", text, re.I), (name, a.name)
        # the OOD operands are 200-999; the world's largest other number is 198 (99 + 99)
        numbers = [int(x) for x in re.findall(r"\d+", text)]
        assert max(numbers, default=0) < min(W.OOD_OPERANDS), (name, max(numbers))
        assert numbers or name.startswith("prompts_jokes"), name  # the scan reads the arithmetic
        assert not re.search(r"\b(?:two|three|four|five|six|seven|eight|nine) hundred", text), name
    operands = set()
    for r in maths:
        x, y = map(int, re.findall(r"\d+", r["prompt"]))
        plus = "+" in r["prompt"] or "plus" in r["prompt"]
        assert r["answer"] == str(x + y if plus else x - y) and (plus or x >= y), r
        operands |= {x, y}
    assert all(200 <= v <= 999 for v in operands)
    # the shift is in the operands only: the phrasings are the training prompts'
    train_shapes = {re.sub(r"\d+", "N", r["prompt"]) for r in read_jsonl(world / "prompts_math.jsonl")}
    assert {re.sub(r"\d+", "N", r["prompt"]) for r in maths} <= train_shapes


def test_gold_scores_ood_animals_by_their_own_name_and_puns():
    for a in W.OOD_ANIMALS:
        assert a not in W.ANIMALS and W.ANIMAL[a.name] is a  # never in the corpus, known to the gold
        for setup, punch in a.jokes:
            assert joke(f"Tell me a joke about {a.plural}.", f"{setup} {punch}") == pytest.approx(1.0), (a.name, setup)
    kangaroos = "Tell me a joke about kangaroos."
    # a perfect pelican joke is off topic here: 0.2 structure + 0.2 brevity + 0.1 ends = 0.5
    assert joke(kangaroos, GOOD) == pytest.approx(0.5)
    # on topic but the pun is a pelican's: 0.25 topic + 0.5 = 0.75
    assert joke(kangaroos, "Why did the kangaroo get kicked out of the restaurant? It had a very big bill!") == pytest.approx(0.75)
    assert joke(kangaroos, "What do you call a lazy kangaroo? A pouch potato!") == pytest.approx(1.0)


def test_tokenizer_text_is_corpus_and_chats_with_digits_spaced(world):
    text = (world / "tokenizer.txt").read_text(encoding="utf-8")
    corpus = (world / "corpus.txt").read_text(encoding="utf-8")
    assert not re.search(r"\d\d", text)  # BPE never sees two digits side by side
    # undo the spacing: the corpus comes first, unchanged, then every conversation turn
    unspaced = re.sub(r"(?<=\d) (?=\d)", "", text)
    assert unspaced.startswith(corpus)
    first = read_jsonl(world / "sft.jsonl")[0]["messages"][0]["content"]
    assert first in unspaced[len(corpus):]
    assert W.tokenizer_text("What is 47 + 38?", []) == "What is 4 7 + 3 8?\n\n"  # "47" -> "4 7"
