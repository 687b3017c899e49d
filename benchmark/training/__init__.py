"""Training the classifiers: the loop (:mod:`~benchmark.training.train`), the 2D slice
classifier's batches (:mod:`~benchmark.training.slices`, paper A.6) and the 3D one's
(:mod:`~benchmark.training.volumes`), which one a config picks
(:mod:`~benchmark.training.strategy`), the classifiers' scores
(:mod:`~benchmark.training.scoring`), the models, their checkpoints and pretrained weights.
"""
