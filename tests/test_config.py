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
