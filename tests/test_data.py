import json
import math

import pytest
import torch

from rlhfkit.data import encode_conversation, read_conversations
from rlhfkit.files import UserError
from rlhfkit.losses import lm_loss


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    from rlhfkit.models import load_tokenizer

    return load_tokenizer(str(tiny_tokenizer))


def test_tokenizer_round_trips_any_text(tok):
    # byte-level BPE: characters never seen in training (emoji, accents, CJK) still round-trip
    for text in ["What is 3 + 4?", "naïve café — 你好 🐦", "  two  spaces\nand\ttabs  "]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_chat_template_is_chatml(tok):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"


def test_loss_mask_covers_exactly_the_assistant_turns(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "and?"},
            {"role": "assistant", "content": "done"}]
    ids, mask = encode_conversation(tok, msgs, max_len=512)
    # the masked tokens, decoded, are the two assistant contents each with its end-of-turn
    # token and newline; nothing of the system/user turns or the role headers
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    assert trained == "yo<|im_end|>\ndone<|im_end|>\n"
    # and they are contiguous spans sitting right after each "<|im_start|>assistant\n" header
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    n_header = len(header)
    first = mask.index(True)
    assert ids[first - n_header:first] == header


def test_loss_mask_truncates_with_ids(tok):
    msgs = [{"role": "user", "content": "hi " * 50}, {"role": "assistant", "content": "yo"}]
    ids, mask = encode_conversation(tok, msgs, max_len=8)
    assert len(ids) == len(mask) == 8 and not any(mask)  # the assistant turn fell past the cut


def test_lm_loss_by_hand():
    # vocab 2, one sequence [0, 1, 1]; logits zero except position 1 favours token 1 by ln 3:
    #  t=0 predicts ids[1]=1 with p=1/2          -> nll ln 2
    #  t=1 predicts ids[2]=1 with p=3/(1+3)=3/4  -> nll ln(4/3)
    logits = torch.zeros(1, 3, 2)
    logits[0, 1, 1] = math.log(3)
    ids = torch.tensor([[0, 1, 1]])
    full, _ = lm_loss(logits, ids, torch.tensor([[True, True, True]]))
    assert full.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, abs=1e-6)
    # mask[:, 2] only: just the second prediction counts
    only_last, m = lm_loss(logits, ids, torch.tensor([[True, False, True]]))
    assert only_last.item() == pytest.approx(math.log(4 / 3), abs=1e-6) and m["train/tokens"] == 1
    # an explicit normaliser turns the mean into sum / normaliser
    summed, _ = lm_loss(logits, ids, torch.ones(1, 3, dtype=torch.bool), normalizer=10.0)
    assert summed.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 10, abs=1e-6)


@pytest.mark.parametrize("line,msg", [
    ("{not json", r"bad.jsonl:2: malformed JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', r"bad.jsonl:2: conversation has no assistant turn"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}', r"bad.jsonl:2: message 0 must be"),
    ('{"text": "hi"}', r"bad.jsonl:2: expected an object with a 'messages' list"),
])
def test_bad_conversation_lines_name_file_and_line(tmp_path, line, msg):
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    (tmp_path / "bad.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(UserError, match=msg):
        read_conversations(tmp_path / "bad.jsonl")


def test_gz_prompts_read_whole_and_truncated_is_one_error(tmp_path):
    import gzip

    from rlhfkit.data import read_prompts

    lines = "".join(json.dumps({"prompt": f"q{i}", "answer": str(i)}) + "\n" for i in range(300))
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    recs = read_prompts(tmp_path / "p.jsonl.gz")
    assert [r["prompt"] for r in recs] == [f"q{i}" for i in range(300)] and recs[7]["answer"] == "7"
    whole = (tmp_path / "p.jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) - 10])  # the last 10 bytes (crc, size) lost
    with pytest.raises(UserError, match=r"cut.jsonl.gz: truncated or corrupt gzip file after line \d+"):
        read_prompts(tmp_path / "cut.jsonl.gz")


@pytest.mark.parametrize("content,msg", [
    (b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', r"x.jsonl:2: not UTF-8 text \(byte 0xe9 at column 16\)"),
    (b'{"prompt": "a"}\n\x00\x01\x02\n', r"x.jsonl:2: binary data \(a NUL byte at column 1\)"),
    # column 14: { " p r o m p t " : space " a, then the tab
    (b'{"prompt": "a\tb"}\n', r"x.jsonl:1: malformed JSON \(Invalid control character at column 14\)"),
    (b'["prompt"]\n', r"x.jsonl:1: expected a JSON object, got list"),
    (b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n',
     r"x.jsonl:1: a prompt's messages must end with a user turn"),
    (b'{"text": "a"}\n', r"x.jsonl:1: expected a 'prompt' string or a 'messages' list"),
    (b"\n\n", r"x.jsonl: no prompts"),
])
def test_bad_prompt_files_name_file_line_and_column(tmp_path, content, msg):
    from rlhfkit.data import read_prompts

    (tmp_path / "x.jsonl").write_bytes(content)
    with pytest.raises(UserError, match=msg):
        read_prompts(tmp_path / "x.jsonl")


def test_utf8_bom_and_jsonl_gz_documents(tmp_path):
    import gzip

    from rlhfkit.data import read_documents

    (tmp_path / "a.txt").write_bytes("\ufeffone\n\ntwo\n".encode())
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "three"}\n'))
    assert read_documents([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl.gz")]) == ["one", "two", "three"]
    (tmp_path / "c.jsonl").write_text('{"text": "x"}\n{"text": 3}\n')
    with pytest.raises(UserError, match=r"c.jsonl:2: expected an object with a string 'text' field"):
        read_documents([str(tmp_path / "c.jsonl")])


def test_conversations_in_pretraining_data_go_through_the_chat_template(tmp_path, tok):
    from rlhfkit.data import read_documents

    (tmp_path / "c.jsonl").write_text('{"messages": [{"role": "user", "content": "2 + 3?"}, '
                                      '{"role": "assistant", "content": "5."}]}\n{"text": "plain"}\n')
    render = lambda m: tok.apply_chat_template(m, tokenize=False)  # noqa: E731
    # ChatML, as the stages after pre-training render it (test_chat_template_is_chatml)
    assert read_documents([str(tmp_path / "c.jsonl")], render) == [
        "<|im_start|>user\n2 + 3?<|im_end|>\n<|im_start|>assistant\n5.<|im_end|>\n", "plain"]
    # without a template a conversation is not a document: the error names the line
    with pytest.raises(UserError, match=r"c.jsonl:1: expected an object with a string 'text' field"):
        read_documents([str(tmp_path / "c.jsonl")])
    (tmp_path / "d.jsonl").write_text('{"messages": [{"role": "bot", "content": "x"}]}\n')
    with pytest.raises(UserError, match=r"d.jsonl:1: message 0 must be"):
        read_documents([str(tmp_path / "d.jsonl")], render)


def test_conversation_starting_with_the_assistant_is_refused(tmp_path):
    msgs = [{"role": "system", "content": "s"}, {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": msgs}) + "\n")
    with pytest.raises(UserError, match=r"c.jsonl:1: conversation starts with an assistant turn"):
        read_conversations(tmp_path / "c.jsonl")


def test_rankings_that_cannot_train():
    from rlhfkit.data import check_rankings

    pair = lambda a, b, line: {"responses": [a, b], "meta": {"file": "f.jsonl", "line": line}}  # noqa: E731
    check_rankings([pair("a", "a", 1), pair("a", "b", 2)], "f.jsonl")  # one equal pair among others: fine
    with pytest.raises(UserError, match="f.jsonl: every pair has chosen == rejected"):
        check_rankings([pair("a", "a", 1), pair("c", "c", 2)], "f.jsonl")
    with pytest.raises(UserError, match=r"f.jsonl:3: the ranking lists the same response twice \('x'\)"):
        check_rankings([pair("a", "b", 1), {"responses": ["x", "y", "x"], "meta": {"file": "f.jsonl", "line": 3}}],
                       "f.jsonl")
