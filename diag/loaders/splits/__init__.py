"""Dataset splits for the [data] rules: loaders and the Split model."""
