"""Knowledge distillation: loss formulas (``losses``), the losses a config names
(``objectives``, registered as 'logit_loss' / 'feature_loss'), stage features of any model
(``features``), and frozen teachers plus the objective of the trainer's ``distill`` block
(``teachers``)."""

# The `distill` config block. Each teacher is a dict: init_from (its mcj workdir or
# checkpoint; 'random' for benchmarks), model (default: the one in that workdir's
# config.json), weight, start / end (fractions of training when it teaches), compute_dtype
# ('' = the run's). Loss = label_weight * CE(labels) + logit_weight * logit_loss +
# feature_weight * feature_loss, averaged over teachers. temperature None means the chosen
# logit loss's own default (kd: 4, dist: 1, soft_ce: 1; distribution takes none); a value
# applies to whichever loss is chosen.
DEFAULTS = {'teachers': (), 'label_weight': 1.0,
            'logit_loss': 'kd',        # kd | distribution | dist | soft_ce | ''
            'logit_weight': 1.0, 'temperature': None, 'dist_beta': 1.0, 'dist_gamma': 1.0,
            'feature_loss': '',        # fitnet | at | real_to_binary | rkd | tinybert | dmd | ''
            'feature_weight': 1.0,
            'feature_stages': 4,       # the deepest resolutions both models share
            'feature_blocks': False,   # every block output there, not just the last
            'rkd_distance_weight': 25.0, 'rkd_angle_weight': 50.0,
            # tinybert: the attention-score term's weight (0: hidden states only, BiT's rep
            # loss) and the hidden-state projection: 'layer' (a W per hidden-state pair:
            # W_e for the embeddings, W_h per student layer), 'shared' (one for all, the
            # official code's fit_dense) or 'none' (equal widths: plain MSE, BiT).
            'tinybert_attention_weight': 1.0, 'tinybert_projection': 'layer',
            # dmd: the weight of BiBERT's code's direction term on the hidden states
            # (its --intermediate_distill; 0: the Q, K, V similarity terms only).
            'dmd_hidden_weight': 1.0}
