"""RQ jobs that retrain, evaluate, promote and push predictions, and the worker process."""
