"""Training pipeline: data loading, the train loop, evaluation."""
