"""The zoo benchmark: do transferability scores pick the checkpoint that transfers best?

A study, not part of the library: :mod:`.protocol` (candidate pool, inputs, budget),
:mod:`.groundtruth` (linear probe and fine-tuning accuracy), :mod:`.scoring` (every registered
score on every target × candidate), :mod:`.evaluation` (agreement measures, sub-pools, bootstrap
intervals, leave-one-target-out), :mod:`.report` (tables). Run with
``python -m tguide.studies.zoo_benchmark {groundtruth,quality}``.
"""
