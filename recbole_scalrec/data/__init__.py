"""Datasets of the plug-in: converters to RecBole atomic files and the per-user sequences."""


def __getattr__(name: str):
    """``create_dataset`` and ``SCaLRecDataset`` on first use (they import the semantic channel)."""
    if name in ("create_dataset", "SCaLRecDataset"):
        from recbole_scalrec.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
