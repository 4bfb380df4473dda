"""Pruning as an optax wrapper whose state holds the masks (``pruner``); its algorithms,
schedules and distributions register themselves (``algorithms``, ``schedules``,
``distributions``); ``targets`` finds the prunable kernels; ``heads`` prunes whole
attention heads of BERT and ViT at the end of a run (Michel et al. 2019)."""

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
            'exclude_first_last': True,
            # Attention heads (heads.py; BERT and ViT), at the end of the run, after and
            # independently of `algorithm`: heads_fraction of all heads are removed (0: off)
            # by importance on heads_batches training batches (0: one pass over the training
            # split), recomputed after every heads_step of all heads (0: one ranking; the
            # paper's iterative curve: 0.1); each layer keeps heads_min_per_layer heads;
            # heads_normalize: per-layer L2 normalisation of the importance (the paper's).
            'heads_fraction': 0.0, 'heads_step': 0.0, 'heads_batches': 0,
            'heads_min_per_layer': 0, 'heads_normalize': True}
