"""Experiment tools apart from the method: reports over run folders, sensitivity sweeps and stock
RecBole baselines on the same split."""
