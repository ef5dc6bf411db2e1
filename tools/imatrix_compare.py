#!/usr/bin/env python3
"""Compare two importance-matrix files (e.g. `ggq calibrate`'s and llama-imatrix's on the same
model, text, context and chunks): entry names, token counts, and per entry the relative
difference of the per-column weights (sum / count).

    python tools/imatrix_compare.py A.gguf B.gguf
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(a_path: str, b_path: str) -> int:
    from ggq.quality.imatrix import read_imatrix

    a, b = read_imatrix(a_path), read_imatrix(b_path)
    na, nb = set(a.names()), set(b.names())
    print(f"entries: {len(na)} / {len(nb)}, common {len(na & nb)}; only in A: {sorted(na - nb)[:5]}; "
          f"only in B: {sorted(nb - na)[:5]}")
    print(f"chunks {a.chunk_count} / {b.chunk_count}, chunk size {a.chunk_size} / {b.chunk_size}")
    worst, rels = ("", 0.0), []
    counts_equal = True
    for n in sorted(na & nb):
        counts_equal &= a.counts[n].tolist() == b.counts[n].tolist()
        wa, wb = a.weights(n).astype(np.float64), b.weights(n).astype(np.float64)
        rel = np.abs(wa - wb) / np.maximum(np.abs(wb), 1e-12)
        rels.append(rel)
        if rel.max() > worst[1]:
            worst = (n, float(rel.max()))
    allrel = np.concatenate(rels)
    print(f"token counts equal: {counts_equal}")
    print(f"relative difference of the per-column weights: median {np.median(allrel):.2e}, "
          f"99th percentile {np.percentile(allrel, 99):.2e}, max {worst[1]:.2e} ({worst[0]})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
