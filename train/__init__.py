"""Command-line training, indexing and evaluation scripts (``python -m train.X``)."""
