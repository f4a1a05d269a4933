"""Loaders: the only code that touches file formats. Each turns a file into a typed artifact."""
