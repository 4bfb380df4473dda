"""Pruning as an optax wrapper whose state holds the masks (``pruner``); its algorithms,
schedules and distributions register themselves (``algorithms``, ``schedules``,
``distributions``); ``targets`` finds the prunable kernels."""

# The `prune` config block. algorithm '' trains dense; sparsity is the target fraction of
# zeros in the pruned kernels; start/end_fraction are fractions of training;
# include/exclude are regular expressions on kernel paths such as
# 'stage1/block0/conv1/kernel'. algorithm, distribution and schedule are registered names
# (kinds prune_algorithm, prune_distribution, prune_schedule).
DEFAULTS = {'algorithm': '',     # magnitude | global_magnitude | random | saliency |
                                 # n_m | channel | slimming
            'sparsity': 0.0, 'distribution': 'uniform',  # uniform | erk
            'schedule': 'gradual',                      # one_shot | gradual | iterative
            'start_fraction': 0.0, 'end_fraction': 0.75, 'update_every_steps': 100,
            'power': 3.0, 'n': 2, 'm': 4, 'rounds': 3, 'rewind_fraction': 0.0,
            'slimming_l1': 1e-4, 'include': (), 'exclude': (),
            'exclude_first_last': True}
