"""On-disk cache of semantic vectors h(t), keyed by what produced them.

Layout: ``<cache_dir>/<sha256(key)[:16]>/`` holds ``key.json`` (the key, e.g. dataset name,
encoder fingerprint, abstract settings) and chunk files ``chunk-<hash of ids>.safetensors`` with
two tensors, ``ids`` (int64) and ``emb`` (float32 ``[len(ids), dim]``), plus metadata holding
sha256 checksums of both. Nothing is pickled.

* A cache folder whose ``key.json`` differs from the key asked for is refused (``ValueError``
  naming the differing entries).
* Chunks are written as soon as they are encoded, through a temporary file and ``os.replace``, so a
  run killed midway leaves only whole chunks; the next run encodes the missing ids only, with the
  same chunk boundaries (missing ids are chunked in the caller's order), and ends identical to an
  uninterrupted run.
* On load, a chunk that does not parse, has inconsistent shapes, fails its checksums or holds
  NaN/inf is reported with a warning, deleted, and its ids recomputed.
* NaN/inf coming out of the LM raises ``FloatingPointError`` naming the ids; they are not cached.
* A warm run (everything cached) performs no LM forward pass.

Several processes (ranks) can fill one cache together: each calls
``get_or_compute(ids, ..., rank=r, world_size=w)`` with the *same* ``ids``; rank ``r`` encodes
the missing ids at positions ``i`` of ``ids`` with ``i % w == r`` into its own chunk files. Pass
``barrier`` (e.g. ``torch.distributed.barrier``) to get the full matrix back on every rank;
without it, a rank returns ``None`` after writing its share, and the caller synchronises and calls
``get_or_compute(ids, ...)`` again (a warm read).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ["SemanticCache"]

_CHUNK_GLOB = "chunk-*.safetensors"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 3600.0


def _canonical(key: dict) -> dict:
    """JSON-normalised copy of ``key`` (tuples become lists, odd values become strings)."""
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def _sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


class SemanticCache:
    """Cache of float32 vectors by int64 id under ``cache_dir``, for one ``key``.

    Args:
        cache_dir: root folder of all caches (``semantic_cache_dir``).
        key: what the vectors depend on (dataset, encoder fingerprint, abstract settings, ...);
            must be JSON-serialisable (other values are stringified).

    Raises:
        ValueError: the key's folder holds a ``key.json`` with other values.
    """

    def __init__(self, cache_dir: str, key: dict):
        if not isinstance(key, dict) or not key:
            raise ValueError("SemanticCache needs a non-empty dict key (dataset, encoder fingerprint, ...).")
        self.key = _canonical(key)
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        self.root = Path(cache_dir).expanduser()
        self.path = self.root / digest
        self.path.mkdir(parents=True, exist_ok=True)
        self.stats = {"hits": 0, "computed": 0, "corrupted": 0, "duplicates": 0}
        key_file = self.path / "key.json"
        if key_file.exists():
            try:
                stored = json.loads(key_file.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ValueError(f"{key_file} is not valid JSON; delete {self.path} to rebuild this cache.") from exc
            if stored != self.key:
                diffs = []
                for name in sorted(set(stored) | set(self.key)):
                    a, b = stored.get(name, "<absent>"), self.key.get(name, "<absent>")
                    if a != b:
                        diffs.append(f"{name}: cached {a!r} != requested {b!r}")
                raise ValueError(
                    f"Semantic cache {self.path} was built for another setting ({'; '.join(diffs)}); "
                    "refusing to reuse it. Use another semantic_cache_dir or delete that folder."
                )
        else:
            self._atomic_write_bytes(key_file, json.dumps(self.key, sort_keys=True, indent=1).encode())
        self._clean_stale_tmp()

    # ------------------------------------------------------------------ files
    def _atomic_write_bytes(self, target: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def _clean_stale_tmp(self) -> None:
        now = time.time()
        for tmp in self.path.glob(_TMP_PREFIX + "*"):
            try:  # a fresh one may belong to another rank still writing
                if now - tmp.stat().st_mtime > _STALE_TMP_S:
                    tmp.unlink()
            except OSError:
                pass

    def chunk_files(self) -> list[Path]:
        """The chunk files now stored."""
        return [Path(p) for p in sorted(glob.glob(str(self.path / _CHUNK_GLOB)))]

    def _write_chunk(self, ids: np.ndarray, emb: np.ndarray, rank: int) -> Path:
        from safetensors.numpy import save

        ids = np.ascontiguousarray(ids, dtype=np.int64)
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        meta = {"emb_sha256": _sha256(emb), "ids_sha256": _sha256(ids), "rank": str(rank), "format": "1"}
        name = f"chunk-{_sha256(ids)[:20]}.safetensors"
        target = self.path / name
        self._atomic_write_bytes(target, save({"ids": ids, "emb": emb}, metadata=meta))
        return target

    def _read_chunk(self, path: Path, dim: Optional[int]):
        """``(ids, emb)`` of a valid chunk, else ``None`` after a warning and deletion."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                names = set(f.keys())
                if names != {"ids", "emb"}:
                    raise ValueError(f"tensors {sorted(names)} instead of ['emb', 'ids']")
                ids, emb = f.get_tensor("ids"), f.get_tensor("emb")
            problem = None
            if ids.dtype != np.int64 or ids.ndim != 1:
                problem = f"ids is {ids.dtype}{list(ids.shape)}, not 1-D int64"
            elif emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[0] != ids.shape[0]:
                problem = f"emb is {emb.dtype}{list(emb.shape)} for {ids.shape[0]} ids"
            elif dim is not None and emb.shape[1] != dim:
                problem = f"emb has dim {emb.shape[1]}, expected {dim}"
            elif meta.get("emb_sha256") != _sha256(emb) or meta.get("ids_sha256") != _sha256(ids):
                problem = "checksum mismatch"
            elif not np.isfinite(emb).all():
                problem = "NaN/inf values"
            if problem:
                raise ValueError(problem)
            return ids, emb
        except Exception as exc:  # noqa: BLE001 - any unreadable chunk is rebuilt
            warnings.warn(f"Semantic cache chunk {path} is corrupted ({exc}); deleting it and recomputing its ids.")
            self.stats["corrupted"] += 1
            try:
                path.unlink()
            except OSError:
                pass
            return None

    # ------------------------------------------------------------------ lookup
    def _load_into(self, ids: np.ndarray, out: Optional[np.ndarray], found: np.ndarray, dim: Optional[int]):
        """Fill rows of ``out`` for ``ids`` stored in the chunks; returns ``out`` (allocated lazily)."""
        sorter = np.argsort(ids, kind="stable")
        sorted_ids = ids[sorter]
        for path in self.chunk_files():
            chunk = self._read_chunk(path, dim if out is None else out.shape[1])
            if chunk is None:
                continue
            c_ids, c_emb = chunk
            if len(c_ids) == 0:
                continue
            pos = np.searchsorted(sorted_ids, c_ids)
            pos[pos >= len(sorted_ids)] = 0
            hit = sorted_ids[pos] == c_ids if len(sorted_ids) else np.zeros(len(c_ids), bool)
            if not hit.any():
                continue
            if out is None:
                out = np.zeros((len(ids), c_emb.shape[1]), dtype=np.float32)
            rows = sorter[pos[hit]]
            out[rows] = c_emb[hit]
            found[rows] = True
        return out

    def get_or_compute(
        self,
        ids: np.ndarray,
        texts_fn: Callable[[np.ndarray], Sequence[str]],
        encoder,
        chunk_size: int = 2048,
        show_progress: bool = False,
        rank: int = 0,
        world_size: int = 1,
        barrier: Optional[Callable[[], None]] = None,
    ) -> Optional[np.ndarray]:
        """Vectors of ``ids`` (float32 ``[len(ids), dim]``, in the order of ``ids``).

        Stored ids are read back; missing ones are encoded ``chunk_size`` at a time
        (``texts_fn(chunk_ids)`` gives their texts, ``encoder.encode`` their vectors) and each chunk
        is written as soon as it is encoded. With ``world_size > 1`` this rank encodes only the
        missing ids at positions ``i % world_size == rank`` of ``ids``; then ``barrier()`` (when
        given) waits for the other ranks and the full matrix is read back, else ``None`` is
        returned (see the module docstring).

        Raises:
            ValueError: ``ids`` are not unique 1-D integers, or texts/vectors have the wrong count.
            FloatingPointError: the encoder returned NaN/inf (the ids are named; nothing is cached).
        """
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"ids must be a 1-D integer array, got {ids.dtype}{list(ids.shape)}.")
        ids = ids.astype(np.int64, copy=False)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique.")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        chunk_size = max(1, int(chunk_size))
        dim = getattr(encoder, "dim", None)

        found = np.zeros(len(ids), dtype=bool)
        out = self._load_into(ids, None, found, dim)
        if out is None:
            if dim is None and len(ids):
                raise ValueError("encoder has no `dim` attribute and nothing is cached yet.")
            out = np.zeros((len(ids), int(dim or 0)), dtype=np.float32)
        self.stats["hits"] += int(found.sum())
        missing_pos = np.flatnonzero(~found)
        if world_size > 1:
            missing_pos = missing_pos[missing_pos % world_size == rank]

        bar = None
        if show_progress and len(missing_pos):
            from tqdm.auto import tqdm

            bar = tqdm(total=len(missing_pos), desc=f"semantic cache (rank {rank})", unit="text", disable=None)
        try:
            for s in range(0, len(missing_pos), chunk_size):
                pos = missing_pos[s:s + chunk_size]
                chunk_ids = ids[pos]
                texts = list(texts_fn(chunk_ids))
                if len(texts) != len(chunk_ids):
                    raise ValueError(f"texts_fn returned {len(texts)} texts for {len(chunk_ids)} ids.")
                # identical texts (e.g. the same venues at the same time of day) are encoded once
                unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
                emb = np.asarray(encoder.encode([str(t) for t in unique]), dtype=np.float32)
                if emb.ndim != 2 or emb.shape[0] != len(unique) or emb.shape[1] != out.shape[1]:
                    raise ValueError(
                        f"encoder returned shape {list(emb.shape)} for {len(unique)} texts (dim {out.shape[1]})."
                    )
                emb = emb[inverse.reshape(-1)]
                self.stats["duplicates"] += len(texts) - len(unique)
                bad = ~np.isfinite(emb).all(axis=1)
                if bad.any():
                    bad_ids = chunk_ids[bad]
                    shown = ", ".join(str(int(i)) for i in bad_ids[:20])
                    more = f" and {len(bad_ids) - 20} more" if len(bad_ids) > 20 else ""
                    raise FloatingPointError(
                        f"The semantic encoder returned NaN/inf for {len(bad_ids)} id(s): {shown}{more}. "
                        "They were not cached; check the model folder and its dtype (float32 is used)."
                    )
                self._write_chunk(chunk_ids, emb, rank)
                out[pos] = emb
                found[pos] = True
                self.stats["computed"] += len(chunk_ids)
                if bar is not None:
                    bar.update(len(chunk_ids))
        finally:
            if bar is not None:
                bar.close()

        if world_size > 1:
            if barrier is None:
                return None
            barrier()
            out = self._load_into(ids, out, found, out.shape[1])
        if not found.all():
            lost = ids[~found]
            raise RuntimeError(
                f"{len(lost)} id(s) are still missing from {self.path} (e.g. {int(lost[0])}); "
                "did every rank run with the same ids?"
            )
        return out

    def __repr__(self) -> str:
        return f"SemanticCache({str(self.path)!r}, chunks={len(self.chunk_files())}, stats={self.stats})"
