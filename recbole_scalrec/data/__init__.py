"""Datasets of the plug-in: converters to RecBole atomic files and the per-user sequences."""
