"""Offline active-learning simulation on a dataset that is already fully labelled.

The labels of the pool are hidden and revealed only when a strategy picks an image, which is
what a person labelling in Label Studio would do. For every seed and strategy:

1. A fixed test split is set aside (``split_seed``; the same for every seed and strategy).
2. The labelled set starts with ``start`` images drawn by the seed (the same for every strategy of a seed,
   different between seeds).
3. Each round: train, evaluate mask and box AP on the test split, score the unlabelled pool with the
   strategy (:func:`shoeseg.active_learning.score_images`, or the pool strategies'
   :func:`shoeseg.active_learning.diverse_scores`) and move the ``batch`` most informative images (lowest
   scores) into the labelled set.

One module a job:

* :mod:`~shoeseg.simulation.config`: :class:`~shoeseg.simulation.config.SimulationConfig`, what to simulate
  and the training configuration of every round;
* :mod:`~shoeseg.simulation.pool`: the test split, the pool, each seed's start set and the pre-scaled images;
* :mod:`~shoeseg.simulation.loop`: :func:`~shoeseg.simulation.loop.run_simulation`, the rounds (train,
  evaluate, score, pick) and resuming a stopped run;
* :mod:`~shoeseg.simulation.results`: the files a run writes and resumes from, ``simulation.csv`` and
  ``selections.json``;
* :mod:`~shoeseg.simulation.summary`: the numbers over seeds, and
  :func:`~shoeseg.simulation.summary.labels_to_reach` ("how many labels does a strategy need to reach
  random's final mean mask AP", as a share of random's labels, per seed);
* :mod:`~shoeseg.simulation.plot`: ``simulation.png``, mask AP against labelled images.

Example:
    >>> from shoeseg.simulation.config import SimulationConfig
    >>> from shoeseg.simulation.loop import run_simulation
    >>> run_simulation(SimulationConfig(strategies=["random", "entropy"]), dataset=ds, images_dir="images",
    ...                out_dir="runs/al")  # doctest: +SKIP
"""
