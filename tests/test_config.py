import dataclasses

import pytest

from rlhfkit.config import describe, key, load_config, save_config
from rlhfkit.files import UserError


@dataclasses.dataclass
class Cfg:
    out: str = key("runs/x", "output dir")
    max_steps: int = key(10, "steps")
    lr: float = key(1e-3, "learning rate")
    lora: bool = key(False, "use LoRA")
    files: list[str] = key([], "files")
    eval_data: str | None = key(None, "optional")


def test_defaults_file_and_set_precedence(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('max_steps = 50\nlr = 2\nfiles = ["a.txt", "b.txt"]\n')
    cfg = load_config(Cfg, f, ["max_steps=7", "lora=true", "out=runs/y"])
    assert cfg.max_steps == 7  # --set wins over the file
    assert cfg.lr == 2.0 and isinstance(cfg.lr, float)  # TOML int accepted for a float key
    assert cfg.files == ["a.txt", "b.txt"] and cfg.lora is True and cfg.out == "runs/y"
    assert load_config(Cfg, sets=["files=x.txt,y.txt"]).files == ["x.txt", "y.txt"]  # comma list on --set


def test_unknown_key_suggests_the_close_one(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("max_step = 5\n")
    with pytest.raises(UserError, match=r"c.toml: unknown key 'max_step' .*did you mean 'max_steps'"):
        load_config(Cfg, f)
    with pytest.raises(UserError, match=r"--set bogus=1: unknown key 'bogus'"):
        load_config(Cfg, sets=["bogus=1"])


@pytest.mark.parametrize("item,msg", [("max_steps=ten", "expected an integer"), ("lora=maybe", "expected true or false"),
                                      ("lr=fast", "expected a number"), ("max_steps", "expected key=value")])
def test_bad_values_name_the_key(item, msg):
    with pytest.raises(UserError, match=msg):
        load_config(Cfg, sets=[item])


def test_bad_toml_and_missing_file(tmp_path):
    (tmp_path / "bad.toml").write_text("max_steps = = 3\n")
    with pytest.raises(UserError, match="bad.toml: not valid TOML"):
        load_config(Cfg, tmp_path / "bad.toml")
    with pytest.raises(UserError, match="config file not found"):
        load_config(Cfg, tmp_path / "nope.toml")


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(Cfg, sets=['out=runs/"q"', "lr=0.5", "files=a,b", "lora=true"])
    save_config(cfg, tmp_path / "config.toml", "test")
    assert load_config(Cfg, tmp_path / "config.toml") == cfg  # eval_data None is written as a comment


def test_describe_lists_every_key():
    text = describe(Cfg)
    assert all(f.name in text for f in dataclasses.fields(Cfg)) and "learning rate" in text


@dataclasses.dataclass
class Stage:
    out: str = key("runs/x", "output dir")
    max_steps: int = key(10, "optimizer steps")
    eval_every: int = key(5, "evaluate every N steps (0: only at the end)")
    learning_rate: float = key(1e-3, "peak learning rate")
    eval_fraction: float = key(0.1, "held out")
    top_p: float = key(1.0, "nucleus")
    d_model: int = key(64, "hidden size")
    n_heads: int = key(4, "heads")
    block_size: int = key(32, "tokens per block", check=lambda v: None if v % 8 == 0 else "must be a multiple of 8")


@pytest.mark.parametrize("item,msg", [
    ("max_steps=0", r"--set max_steps=0: max_steps must be >= 1, got 0"),
    ("eval_every=-1", r"eval_every must be >= 0, got -1"),  # 0 has a meaning there (its help says so)
    ("learning_rate=-1", r"learning_rate must be > 0, got -1.0"),
    ("learning_rate=nan", r"learning_rate must be a finite number, got nan"),
    ("learning_rate=-inf", r"learning_rate must be a finite number"),
    ("eval_fraction=1", r"eval_fraction must be in \[0, 1\), got 1.0"),
    ("top_p=0", r"top_p must be in \(0, 1\], got 0.0"),
    ("out=", r"--set out=: out must not be empty"),
    ("n_heads=5", r"--set n_heads=5: n_heads=5 must divide d_model=64"),
    ("d_model=66", r"--set d_model=66: n_heads=4 must divide d_model=66"),  # names the key that was set
    ("block_size=12", r"--set block_size=12: block_size must be a multiple of 8"),  # a key's own check
])
def test_values_out_of_range_name_key_and_origin(item, msg):
    with pytest.raises(UserError, match=msg):
        load_config(Stage, sets=[item])


def test_zero_where_the_help_gives_it_a_meaning_and_file_origins(tmp_path):
    assert load_config(Stage, sets=["eval_every=0", "eval_fraction=0", "block_size=16"]).eval_every == 0
    (tmp_path / "c.toml").write_text("max_steps = -3\n")
    with pytest.raises(UserError, match=r"c.toml: key 'max_steps': max_steps must be >= 1, got -3"):
        load_config(Stage, tmp_path / "c.toml")


@pytest.mark.parametrize("content,msg", [(b"max_steps = 3\n\x00\x89PNG\n", r"c.toml:2: binary data"),
                                         (b'out = "caf\xe9"\n', r"c.toml:1: not UTF-8 text \(byte 0xe9")])
def test_binary_and_non_utf8_config_files(tmp_path, content, msg):
    (tmp_path / "c.toml").write_bytes(content)
    with pytest.raises(UserError, match=msg):
        load_config(Stage, tmp_path / "c.toml")
