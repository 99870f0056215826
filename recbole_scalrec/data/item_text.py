"""Raw text of items and requests for the semantic channel.

RecBole turns ``token_seq`` columns into word ids, so item text is read here from the raw
``.item`` file (config ``item_text_fields`` names its text columns) and mapped onto RecBole's
internal item ids. Request text (ReDial's seeker utterances) is an ``.inter`` column of type
``token_seq`` (config ``request_text_field``) rebuilt from RecBole's word tokens.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd


class DataTextError(ValueError):
    """The dataset lacks the text the semantic channel needs; the message says what to do."""


def _read_atomic(path: str, sep: str) -> pd.DataFrame:
    frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, quoting=3, engine="python" if len(sep) > 1 else "c")
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    return frame


def load_item_texts(config, dataset, fields: list[str] | str | None = None) -> list[str]:
    """Text of every internal item id (index 0, the padding item, is ``""``).

    Text = the values of ``fields`` (default: ``item_text_fields``) joined by ``", "`` (empty values
    skipped); ``item_text_fields: ~`` uses every non-numeric column other than the item id.

    Raises:
        DataTextError: no ``.item`` file, or a named field it lacks.
    """
    path = os.path.join(config["data_path"], f"{config['dataset']}.item")
    if not os.path.isfile(path):
        raise DataTextError(
            f"No item file {path}: the semantic channel needs item text. Add {config['dataset']}.item "
            f"with the item id and text columns, and name them with --item_text_fields=\"['title']\"."
        )
    sep = config["field_separator"] or "\t"
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split(sep)
    types = {h.split(":", 1)[0]: (h.split(":", 1)[1] if ":" in h else "token") for h in header}
    iid_field = dataset.iid_field
    if fields is None:
        fields = config["item_text_fields"]
    if fields is None:
        fields = [n for n, t in types.items() if n != iid_field and t in ("token", "token_seq")]
    if isinstance(fields, str):
        fields = [fields]
    missing = [f for f in fields if f not in types]
    if missing or not fields:
        raise DataTextError(
            f"item_text_fields {list(fields)} not all in {path} (it has {list(types)}; missing {missing}). "
            f"Pass --item_text_fields=\"[...]\" naming text columns of the .item file."
        )
    if iid_field not in types:
        raise DataTextError(f"{path} has no item id column {iid_field!r}; its header is {header}.")
    frame = _read_atomic(path, sep)
    texts = [""] * dataset.item_num
    token2id = dataset.field2token_id[iid_field]
    values = frame[fields].astype(str).to_numpy()
    for token, row in zip(frame[iid_field].to_numpy(), values):
        internal = token2id.get(token)
        if internal is not None:
            texts[internal] = ", ".join(v.strip() for v in row if v.strip())
    return texts


def load_request_texts(config, dataset, rows: np.ndarray) -> list[str] | None:
    """The request text of each interaction (in the order of ``rows``), or None when the
    dataset has no ``request_text_field``."""
    field = config["request_text_field"]
    if not field:
        return None
    if field not in dataset.inter_feat.columns:
        raise DataTextError(
            f"request_text_field {field!r} is not a loaded column of {config['dataset']}.inter; "
            f"add it to load_col (inter) or set --request_text_field=None."
        )
    words = np.asarray(dataset.field2id_token[field])
    column = dataset.inter_feat[field]  # pandas (before RecBole's build) or a padded tensor
    ids = list(column) if not hasattr(column, "numpy") or hasattr(column, "iloc") else list(column.numpy())
    return [" ".join(words[np.asarray(ids[r])[np.asarray(ids[r]) > 0]]) for r in rows]
