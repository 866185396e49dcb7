"""Numbered, timestamped lines, `<n> <unix time>`, as a job prints them or as bare XADDs.

`python -m bench.lines --count N [--rate R]` prints them (a farm job's command);
`python -m bench.lines --count N [--rate R] --xadd REDIS_URL KEY` adds one stream entry per line.
Without a rate, lines go as fast as they can, in chunks, the way a buffered stdout writes them.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

#: Lines per write (or per pipelined round trip) at full speed.
CHUNK = 100


def lines(count: int, rate: float) -> Iterator[list[str]]:
    """Chunks of lines; paced chunks are one line each, sent on the line's own schedule."""
    if rate:
        begun = time.time()
        for i in range(count):
            delay = begun + i / rate - time.time()
            if delay > 0:
                time.sleep(delay)
            yield [f"{i} {time.time():.6f}"]
        return
    for start in range(0, count, CHUNK):
        yield [f"{i} {time.time():.6f}" for i in range(start, min(count, start + CHUNK))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="lines per second; 0: as fast as possible")
    parser.add_argument("--xadd", nargs=2, metavar=("REDIS_URL", "KEY"))
    args = parser.parse_args()
    if args.xadd:
        import redis

        client = redis.Redis.from_url(args.xadd[0])
        for chunk in lines(args.count, args.rate):
            pipe = client.pipeline(transaction=False)
            for line in chunk:
                pipe.xadd(args.xadd[1], {"line": line})
            pipe.execute()
        return
    out = sys.stdout.buffer
    for chunk in lines(args.count, args.rate):
        out.write(("\n".join(chunk) + "\n").encode())
        out.flush()


if __name__ == "__main__":
    main()
