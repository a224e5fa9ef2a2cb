"""Host memory the pool keeps per live object: the handle table and the segment table.

    python benchmarks/bench_pool_bytes.py [--sizes 10000,100000,1000000] [--json F]

Counts bytes (no timing): for each size, a host pool holding that many objects placed
in one batch reports ``stats()['handle_table_bytes']`` and ``['segment_table_bytes']``;
the figure is the handle table per live object (the table holds the most objects ever
live at once plus 16 384 free slots, so small pools pay for the reserve). Run it with
``PYTHONPATH=<other checkout>`` to count an older tree (it falls back on the arrays'
sizes where ``stats()`` lacks the fields).
"""

from __future__ import annotations

import argparse

import numpy as np

import devpool
from _common import header, save


def table_bytes(pool) -> tuple[int, int]:
    st, al = pool.stats(), pool.alloc_
    tab = st.get("handle_table_bytes")
    if tab is None:                                  # an older tree: count the arrays
        tab = sum(a.nbytes for a in (al.locs, al.sizes, al.gens, al._ring, al._seen))
    seg = st.get("segment_table_bytes")
    if seg is None:
        seg = sum(a.nbytes for a in (al.seg_fill, al.seg_live, al.seg_placed, al.seg_in_use, al.seg_warm))
    return int(tab), int(seg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--json")
    args = ap.parse_args()
    r = header("bench_pool_bytes", devpool=devpool.__file__)
    print(f"# {r['command']}  ({r['date']}, {r['machine']}; devpool from {devpool.__file__})")
    r["rows"] = []
    for n in (int(x) for x in args.sizes.split(",")):
        with devpool.open_pool("host", max(64 << 20, n * 128), segment_bytes=256 * 1024) as pool:
            pool.alloc_batch(np.full(n, 48))
            tab, seg = table_bytes(pool)
            row = {"live_objects": n, "slots": int(pool.alloc_.locs.shape[0]), "handle_table_bytes": tab,
                   "handle_table_bytes_per_object": tab / n, "segment_table_bytes": seg}
        r["rows"].append(row)
        print(f"{n:>9} objects: handle table {tab:>11} bytes = {tab / n:6.1f} a live object "
              f"({row['slots']} slots); segment table {seg} bytes")
    save(r, args.json)


if __name__ == "__main__":
    main()
