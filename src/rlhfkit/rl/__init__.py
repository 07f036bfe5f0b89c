"""The RL loop that ppo, grpo and rloo share; a stage adds only its advantages and its loss.

    config.py    RLConfig (the shared keys), check_sizes, the frozen RolloutSpec / UpdateSpec
    setup.py     load_models (policy, reference, LoRA), load_prompts
    rollout.py   Experience, collect (sample, score, no-grad forwards, all-gather), token_logits
                 (the forward over the real response tokens only) and its padded response_logits
    packed.py    the packing token_logits runs, and the attention that keeps packed rows apart
    update.py    update (ppo_epochs x num_minibatches optimizer steps), own_logprobs
    evaluate.py  evaluate (eval/* metrics and every eval prompt's sample), SamplesLog
    loop.py      Algorithm and run(cfg, algorithm, guard=None): the step loop, eval, guard hook,
                 metrics, checkpoints

One RL step, as every stage runs it:

    records  = prompts of step s               (batch_indices: a pure function of seed and s)
    rollout  = collect(...)                    each prompt x group_size, sampled in chunks whose
                                               generator is seeded by (seed, s, chunk); scored;
                                               old/ref logprobs (and values) by no-grad forwards;
                                               then all-gathered, so every rank holds the whole
                                               rollout and computes the same advantages
    advantages                                 the stage's own (GAE, group-normalised, RLOO, ...)
    update(...)                                ppo_epochs x num_minibatches optimizer steps; the
                                               minibatch order is a pure function of (seed, s,
                                               epoch) and every rank takes its slice of each

Shapes follow DESIGN.md: rows of the rollout are B = prompts_per_step * group_size, the G
samples of a prompt contiguous; (B, T) tensors are over response tokens (T = max_new_tokens).
Importing this package imports nothing: the modules load torch when they are imported.
"""
