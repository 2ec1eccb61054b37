"""Baseline for `bench map`: Python's multiprocessing.Pool(2).map over tiny tasks.

Usage: python3 pool_map.py [N] [CHUNKSIZE]
Prints the tasks per second of one timed map (the pool is started and warmed up first,
as the Rust side's is). CHUNKSIZE defaults to Pool.map's own rule.
"""

import multiprocessing
import sys
import time


def inc(n):
    return n + 1


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    chunksize = int(sys.argv[2]) if len(sys.argv) > 2 else None
    with multiprocessing.Pool(2) as pool:
        pool.map(inc, range(1000))
        start = time.perf_counter()
        results = pool.map(inc, range(n), chunksize)
        elapsed = time.perf_counter() - start
    assert results[-1] == n and len(results) == n
    print(n / elapsed)


if __name__ == "__main__":
    main()
