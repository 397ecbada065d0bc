"""What is done with stored features: classifiers, fit, ensembles, sweeps, fine-tuning, predict, leaks."""
