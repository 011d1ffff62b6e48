"""Items added to an ivf index without re-clustering (`--index-add`, `ivf_index.add`): recall@10
against exact search after each batch of additions, and when `ivf_index.rebuild_reasons` advises a
rebuild, against a full rebuild of the same items.

  .venv/bin/python bench/bench_index_updates.py                          # 1,000,000 + 5 x 10,000
  .venv/bin/python bench/bench_index_updates.py --size 100000 --batches 3  # a quick check

Data: bench_index.py's synthetic clustered unit-norm embeddings (256 dimensions); the added items
come from the same distribution; 1,000 held-out queries. int8 storage, default lists and nprobe.
"""

import argparse
import time

import numpy as np
from bench_index import exact_truth, synthetic

from triplet_tfx.components import ivf_index as ivf


def measured_recall(state, queries, nprobe):
    truth = exact_truth(state.float32(), queries)
    module = ivf.IvfIndex(state)
    found = [module.search(queries[s : s + 64], 10, nprobe)[0].numpy() for s in range(0, len(queries), 64)]
    return ivf.recall(state.ids[np.concatenate(found)], state.ids[truth])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="items of the first build (default %(default)s)")
    parser.add_argument("--batch", type=int, default=10_000, help="items per addition (default %(default)s)")
    parser.add_argument("--batches", type=int, default=5, help="additions (default %(default)s)")
    parser.add_argument("--growth", type=float, default=0.0, help="also add this share of --size at the end")
    args = parser.parse_args()
    total = args.size + args.batch * args.batches + int(args.growth * args.size)
    x, labels, queries = synthetic(total, 1000)
    ids = np.array([f"item/{i}" for i in range(total)], dtype=object)
    start = time.monotonic()
    state = ivf.build_for(x[: args.size], ids[: args.size], labels[: args.size], 0, "int8")
    nprobe = ivf.default_nprobe(state.lists)
    print(f"build: {args.size:,} items, {state.lists} lists, nprobe {nprobe}, {time.monotonic() - start:.1f} s")
    print("| items | added | add s | recall@10 | rebuild advised |\n|---:|---:|---:|---:|---|")
    print(f"| {state.size:,} | 0 | | {measured_recall(state, queries, nprobe):.4f} | |")
    sizes = [args.batch] * args.batches + ([int(args.growth * args.size)] if args.growth else [])
    position = args.size
    for count in sizes:
        start = time.monotonic()
        state = ivf.add(
            state, x[position : position + count], ids[position : position + count], labels[position : position + count]
        )
        seconds = time.monotonic() - start
        position += count
        value = measured_recall(state, queries, nprobe)
        reasons = "; ".join(ivf.rebuild_reasons(state, value)) or "no"
        print(f"| {state.size:,} | {count:,} | {seconds:.1f} | {value:.4f} | {reasons} |")
    rebuilt = ivf.build_for(x[:position], ids[:position], labels[:position], 0, "int8")
    rebuilt_nprobe = ivf.default_nprobe(rebuilt.lists)
    print(
        f"full rebuild of the {position:,} items: {rebuilt.lists} lists, nprobe {rebuilt_nprobe}, "
        f"recall@10 {measured_recall(rebuilt, queries, rebuilt_nprobe):.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
