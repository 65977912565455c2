"""One small module per task: how to build inputs and labels, and how to score."""
