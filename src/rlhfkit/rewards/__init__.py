"""Reward functions: verifiers, reward-model scorers and gold labelers (import the module you need)."""
