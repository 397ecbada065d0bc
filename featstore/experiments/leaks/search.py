"""Blocked nearest-neighbour search on stored features: centred cosine, streamed in blocks of whole chunks.

Both sides are read block by block (at most ``budget`` bytes each) with a running maximum per query row, so stores
larger than memory work. The query side is a whole split, or a sample of one split's rows searched against the same
split with each row's own match left out (the calibration's leave-one-out similarities).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from featstore.errors import StoreError
from featstore.outputs import terminal_safe
from featstore.store.reader import FeatureStore

TILE_FACTOR = 4  # bytes per similarity value: tiles of at most `budget` bytes
OUTLIER_FACTOR = 1000  # a reference row whose norm is over this many times the median dominates the mean: refused

logger = logging.getLogger(__name__)


class Centre(NamedTuple):
    """What the comparison is centred on: the reference split's mean row, its row count, a power-of-two scale."""

    mean: np.ndarray  # float32 mean row of the reference split
    rows: int  # rows in the reference split
    scale: float  # 2**k >= 2 * max |value| of the reference: centred rows divided by it cannot overflow when squared


# every float16 value as float32, looked up by its bits: exact, and about twice as fast as numpy's cast of stored
# features (half of a ReLU layer's values are zeros, which the cast takes slowly)
_FLOAT16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def _rows(X: np.ndarray) -> np.ndarray:
    """Feature blocks as float32 rows (flattened; a new array for float16, which is always converted)."""
    if isinstance(X, np.ndarray) and X.dtype == np.float16:
        return _FLOAT16[X.reshape(len(X), -1).view(np.uint16)]
    return np.asarray(X, dtype=np.float32).reshape(len(X), -1)


def _bad_rows(R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, squared norms)``: the rows holding NaN or inf, or finite values so large that the row's squared norm
    overflows float32 (3e38: "overflow encountered" and similarities of 1.0 to every row): in float32 (no copy of the
    block), such a row's squared norm is inf, a NaN row's NaN."""
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN rows are refused by the caller, not warned about
        sq = np.einsum("ij,ij->i", R, R)
    return np.flatnonzero(~np.isfinite(sq)), sq


def _refuse_outliers(fs: FeatureStore, name: str, split: str, norms: np.ndarray) -> None:
    """StoreError naming the reference rows whose norm is over OUTLIER_FACTOR x the median of the non-zero ones: such a
    row dominates the mean every row is centred on, so every centred row points the same way and every similarity
    comes out near 1 (one row of 1e10 among rows of ~1: threshold 0.0003, "59 with an exact copy inside train", every
    test row a near-duplicate). A warning before was not enough: the answers were printed anyway. All-zero rows (a dead
    layer's, padding) are left out of the median: with half the rows zero it was 0 and the check was off."""
    nonzero = norms[norms > 0] if len(norms) else norms
    median = float(np.median(nonzero)) if len(nonzero) else 0.0
    big = np.flatnonzero(norms > OUTLIER_FACTOR * median) if median > 0 else np.zeros(0, np.int64)
    if len(big):
        paths = fs.paths(split, name)
        rows = ", ".join(f"{split}/{i} ({terminal_safe(paths[i])}, norm {float(norms[i]):.3g})" for i in big[:3])
        raise StoreError(
            f"store {terminal_safe(str(fs.path))}: {len(big)} row(s) of {name!r} in {split!r} have a norm over "
            f"{OUTLIER_FACTOR} x the median of its non-zero rows ({median:.3g}): {rows}{', ...' if len(big) > 3 else ''}; "
            f"they would dominate the mean every row is centred on, and every similarity would come out near 1. Look at "
            f"those images (a broken file, a model overflowing on it), then drop or replace them and re-extract the "
            f"split with `featstore extract --split {split} --overwrite`"
        )


def scan(
    fs: FeatureStore, name: str, splits: Sequence[str], reference: str, budget: int, command: str = "leaks"
) -> Centre:
    """One pass over each split: the reference's mean row (float64 sums), row count and scale; refuses NaN/inf rows,
    naming ``command`` (the one the user ran: ``similar`` said "so leaks (like fit) refuses").

    Every split is scanned before refusing, so the message names each split with bad rows, how many, and a few paths.
    """
    total, n, bad, top, norms = None, 0, {}, 0.0, []
    for split in dict.fromkeys([reference, *splits]):
        rows, off = [], 0
        for X, _ in fs.iter_batches(split, name, max_bytes=budget):
            R = _rows(X)
            found, sq = _bad_rows(R)
            rows += (found + off).tolist()
            if split == reference:
                part = R.sum(axis=0, dtype=np.float64)
                total = part if total is None else total + part
                top = max(top, float(R.max(initial=0.0)), -float(R.min(initial=0.0)))
                norms.append(np.sqrt(sq))
                n = off + len(R)
            off += len(R)
        if rows:
            bad[split] = rows
    if bad:
        paths = {s: fs.paths(s, name) for s in bad}
        said = "; ".join(
            f"{s!r}: {len(r)} row(s), e.g. {', '.join(terminal_safe(paths[s][i]) for i in r[:3])}"
            for s, r in bad.items()
        )
        raise StoreError(
            f"store {terminal_safe(str(fs.path))}: extractor {name!r} holds features with NaN or inf, or so large that "
            f"a row's squared norm overflows float32 ({said}); no similarity can be measured on them, so {command} (like fit) "
            f"refuses. Check those images and the model's weights, then re-extract the split(s) with "
            f"`featstore extract --split NAME --overwrite` (`featstore check` counts such rows)"
        )
    if n < 2:
        raise StoreError(
            f"split {reference!r} of {name!r} has {n} row(s); comparing needs at least 2 (the mean is subtracted)"
        )
    _refuse_outliers(fs, name, reference, np.concatenate(norms) if norms else np.zeros(0))
    scale = float(2.0 ** np.ceil(np.log2(2 * top))) if top > 0.5 else 1.0
    return Centre((total / n).astype(np.float32), n, scale)


def normalised(X: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows minus the reference mean, scaled to unit length (a row equal to the mean stays zero; no overflow)."""
    R = _rows(X) - mean
    R /= np.maximum(np.abs(R).max(axis=1, keepdims=True, initial=0.0), np.finfo(np.float32).tiny)
    return R / np.maximum(np.linalg.norm(R, axis=1, keepdims=True), np.finfo(np.float32).tiny)


def query_blocks(
    fs: FeatureStore, name: str, split: str, budget: int, pick: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(row indices, features)`` of a split block by block; with ``pick`` (sorted indices) only those rows, gathered."""
    off, buf, idx, size = 0, [], [], 0
    for X, _ in fs.iter_batches(split, name, max_bytes=budget):
        if pick is None:
            yield np.arange(off, off + len(X)), X
        else:
            sel = pick[(pick >= off) & (pick < off + len(X))]
            if len(sel):
                buf.append(np.asarray(X[sel - off]))
                idx.append(sel)
                size += buf[-1].nbytes
            if size >= budget:
                yield np.concatenate(idx), np.concatenate(buf)
                buf, idx, size = [], [], 0
        off += len(X)
    if buf:
        yield np.concatenate(idx), np.concatenate(buf)


def nearest(
    fs: FeatureStore,
    name: str,
    blocks: Iterator[tuple[np.ndarray, np.ndarray]],
    reference: str,
    centre: Centre,
    budget: int,
    *,
    leave_out: bool = False,
    want: Mapping[int, int] | None = None,
    skip_self: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    """Per query row: the highest similarity to a reference row and that row's index (blocked products).

    ``leave_out``: the query rows are rows of ``reference``; each is compared with the *other* rows as a new query
    would be, i.e. centred on the mean of the other rows (:func:`_held_out`).
    ``want`` maps query row index -> reference row index of pairs whose similarity is wanted too (same bytes).
    ``skip_self``: the query rows are rows of ``reference`` (another split than the centre's, e.g. test against
    itself): each row's own is left out, the centre is kept (near-duplicates inside one split).
    """
    sims, idx, got = [], [], {}
    want = dict(want or {})
    for rows, Q in blocks:
        q = _centred(Q, centre) if leave_out else normalised(Q, centre.mean)
        best = np.full(len(q), -np.inf, dtype=np.float32)
        arg = np.zeros(len(q), dtype=np.int64)
        wanted = [(i, want[int(r)]) for i, r in enumerate(rows) if int(r) in want]
        offset = 0
        for T, _ in fs.iter_batches(reference, name, max_bytes=budget):
            t = _centred(T, centre) if leave_out else normalised(T, centre.mean)
            units = unit_rows(t) if leave_out else None
            step = max(1, budget // (TILE_FACTOR * len(t) * (4 if leave_out else 1)))  # held-out: 4 tiles at once
            for s in range(0, len(q), step):
                if leave_out:
                    v, j = held_out_best(q[s : s + step], t, units, centre.rows, rows[s : s + step] - offset)
                else:
                    S = q[s : s + step] @ t.T
                    if skip_self:
                        own = rows[s : s + step] - offset
                        inside = np.flatnonzero((own >= 0) & (own < len(t)))
                        S[inside, own[inside]] = -np.inf
                    j = S.argmax(axis=1)
                    v = S[np.arange(len(j)), j]
                better = v > best[s : s + step]
                best[s : s + step][better] = v[better]
                arg[s : s + step][better] = j[better] + offset
            for i, r in wanted:
                if offset <= r < offset + len(t):
                    got[int(rows[i])] = float(q[i] @ t[r - offset])
            offset += len(t)
        sims.append(best)
        idx.append(arg)
    if not sims:
        return np.zeros(0, np.float32), np.zeros(0, np.int64), got
    return np.concatenate(sims), np.concatenate(idx), got


def _centred(X: np.ndarray, centre: Centre) -> np.ndarray:
    """Reference rows minus the mean, divided by the centre's scale (one power of two for all: same units)."""
    return (_rows(X) - centre.mean) / np.float32(centre.scale)


FAST_RHO = 1e-3  # held_out_best's candidate path: c * |a| / |t| at most this (a row's move when it leaves the mean)
SLACK = 2e-4  # float32 error allowed on a product of unit rows (512 terms: at most ~3e-5; with a margin)


def unit_rows(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(t / |t|, |t|)`` of a block of rows (float32; a zero row stays zero), made once per reference block."""
    nt = np.sqrt(np.einsum("ij,ij->i", t, t))
    return t / np.maximum(nt, np.finfo(np.float32).tiny)[:, None], nt


def held_out_best(
    a: np.ndarray, t: np.ndarray, units: tuple[np.ndarray, np.ndarray], n: int, own: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``a``: the highest held-out similarity (:func:`_held_out`) to a row of ``t`` and that row's index.

    ``units`` is :func:`unit_rows` of ``t``; ``own[i]`` is row i's own index in ``t`` (left out; any value outside
    ``t`` when it is not there). Leaving a row out of the mean turns its partner t into t + c a (c = 1/(n - 1)), which
    can only bring t closer to a: the held-out similarity is at least the plain cosine C of a and t and at most
    C + 2 c |a| / |t|. So one matrix product of unit rows finds each row's maximum cosine m, and only the pairs with
    C >= m - 2 c |a| / min|t| (less float32's error) can hold the held-out maximum; those few are measured exactly
    (float64). The elementwise passes over a whole tile that :func:`_held_out` needs cost about twice the product
    itself; a tile where the bound is loose (a row of ``t`` near the mean, a row of ``a`` at it) or where too many
    pairs are close is measured whole, as before.
    """
    c = 1.0 / (n - 1)
    tn, nt = units
    na = np.sqrt(np.einsum("ij,ij->i", a, a))
    inside = np.flatnonzero((own >= 0) & (own < len(t)))
    rho = c * na / nt.min() if len(t) and nt.min() > 0 else np.full(len(a), np.inf)
    if len(a) and na.min() > 0 and rho.max() <= FAST_RHO:
        C = (a / na[:, None]) @ tn.T
        C[inside, own[inside]] = -np.inf
        r = np.arange(len(a))
        j = C.argmax(axis=1)
        low = C[r, j] - 2 * rho - SLACK
        C[r, j] = -np.inf  # the second best tells which rows have other candidates (few): no pass over all pairs
        more = np.flatnonzero(C.max(axis=1) >= low)
        ii, jj = np.nonzero(C[more] >= low[more, None])
        ii, jj = np.concatenate([r, more[ii]]), np.concatenate([j, jj])
        fine = jj != own[ii]  # a row whose only partner is itself keeps -inf, as argmax gives
        ii, jj = ii[fine], jj[fine]
        if len(ii) <= max(8 * len(a), C.size // 64):
            del C
            A, T = a[ii].astype(np.float64), t[jj].astype(np.float64)
            g, a2, t2 = np.einsum("ij,ij->i", A, T), np.einsum("ij,ij->i", A, A), np.einsum("ij,ij->i", T, T)
            sims = np.clip((g + c * a2) / np.sqrt(a2 * np.maximum(t2 + 2 * c * g + c * c * a2, 0.0)), -1, 1)
            best = np.full(len(a), -np.inf)
            np.maximum.at(best, ii, sims)
            arg = np.full(len(a), len(t), dtype=np.int64)
            top = sims == best[ii]
            np.minimum.at(arg, ii[top], jj[top])  # ties: the first row, as argmax gives
            arg[arg == len(t)] = 0
            return best.astype(np.float32), arg
    S = _held_out(a, t, n)
    S[inside, own[inside]] = -np.inf
    j = S.argmax(axis=1)
    return S[np.arange(len(j)), j], j


def _held_out(a: np.ndarray, t: np.ndarray, n: int) -> np.ndarray:
    """Centred cosine of rows ``a`` of an n-row split with rows ``t`` of it, each ``a`` row left out of the mean.

    Without row i the mean moves by -(x_i - mean)/(n - 1): x_i - mean' is x_i - mean scaled (same direction) and
    x_j - mean' = (x_j - mean) + (x_i - mean)/(n - 1). So a train row is measured exactly as a new query would be;
    with the full mean its similarities to the other rows come out about 1/(n - 1) too low.
    """
    c = np.float32(1.0 / (n - 1))
    na2 = np.einsum("ij,ij->i", a, a)[:, None]
    nt2 = np.einsum("ij,ij->i", t, t)[None, :]
    G = a @ t.T
    # In place, two tile-sized arrays in all: the elementwise passes cost as much as the product itself otherwise.
    den = np.multiply(G, 2 * c)
    den += nt2
    den += c * c * na2
    np.maximum(den, 0, out=den)
    np.sqrt(den, out=den)
    den *= np.sqrt(na2)
    tiny = den <= 1e-6 * np.sqrt(na2) * np.sqrt(
        nt2
    )  # a row equal to the mean of the others (two-row split): 0, not 0/0
    G += c * na2
    np.divide(G, den, out=G, where=~tiny)
    G[tiny] = 0
    return np.clip(G, -1, 1, out=G)


def rounded(sims: np.ndarray) -> np.ndarray:
    """Similarities as float64 rounded to 6 places, at most 1 (float32 sums: an exact copy may come out 0.99999994)."""
    return np.minimum(np.asarray(sims, dtype=np.float64).round(6), 1.0)
