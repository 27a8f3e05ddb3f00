#!/usr/bin/env python3
"""Independent echo load client: drives any TCP echo server and validates every echoed byte.

    scripts/echo-load.py --port 7007 --connections 500 --depth 16 --size 64 --seconds 10

Each connection sends messages of a per-connection rolling byte pattern, keeping `depth` messages in
flight (pipelining), and checks that the bytes coming back are exactly the bytes sent, in order.
Connections are spread over 127.0.0.x source addresses. Prints one summary line and exits non-zero
on any error or mismatch. Bounded in time: it stops by itself.
"""
import argparse
import asyncio
import sys
import time


def pattern(stream, offset, count):
    return bytes(((stream * 31 + offset + i) % 251) for i in range(count))


async def run_connection(args, stream, deadline, totals):
    source = f"127.0.0.{2 + stream % 200}"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(args.host, args.port, local_addr=(source, 0)), timeout=10)
    except Exception as error:  # noqa: BLE001 - any failure counts as an error
        totals["errors"] += 1
        totals["first_error"] = totals.get("first_error") or f"connect: {error!r}"
        return
    sent = 0
    validated = 0
    try:
        while time.monotonic() < deadline:
            while sent - validated < args.depth * args.size:
                writer.write(pattern(stream, sent, args.size))
                sent += args.size
            await writer.drain()
            data = await asyncio.wait_for(reader.read(65536), timeout=10)
            if not data:
                raise ConnectionError("server closed the connection")
            if data != pattern(stream, validated, len(data)):
                totals["mismatches"] += 1
                raise ValueError(f"stream {stream}: echoed bytes differ at offset {validated}")
            validated += len(data)
            totals["messages"] += len(data) / args.size
        # Drain what is still in flight.
        while validated < sent:
            data = await asyncio.wait_for(reader.read(65536), timeout=10)
            if not data or data != pattern(stream, validated, len(data)):
                totals["mismatches"] += 1
                raise ValueError(f"stream {stream}: short or wrong echo while draining")
            validated += len(data)
            totals["messages"] += len(data) / args.size
    except Exception as error:  # noqa: BLE001
        totals["errors"] += 1
        totals["first_error"] = totals.get("first_error") or repr(error)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:  # noqa: BLE001
            pass
        totals["bytes"] += validated


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7007)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    totals = {"messages": 0, "bytes": 0, "errors": 0, "mismatches": 0}
    start = time.monotonic()
    deadline = start + args.seconds
    await asyncio.gather(*(run_connection(args, s, deadline, totals) for s in range(args.connections)))
    elapsed = time.monotonic() - start
    print(f"echo-load: {args.connections} connections, depth {args.depth}, {args.size} B: "
          f"{int(totals['messages'])} messages ({totals['bytes'] / 1e6:.1f} MB validated) in {elapsed:.1f} s, "
          f"{totals['messages'] / elapsed:.0f} msg/s, errors {totals['errors']}, mismatches {totals['mismatches']}"
          + (f", first error: {totals['first_error']}" if totals.get("first_error") else ""))
    return 1 if totals["errors"] or totals["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
