"""Point-in-time features, labels, training sets, training, evaluation, the registry, scoring and reasons."""
