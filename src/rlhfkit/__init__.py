"""rlhfkit: pre-training -> SFT -> RLHF at a scale one person can run.

Kept empty on purpose: `import rlhfkit` must stay cheap (the CLI answers --help in well
under a second). Import the module you need: `rlhfkit.losses`, `rlhfkit.models`, ...
"""

__version__ = "0.1.0"
