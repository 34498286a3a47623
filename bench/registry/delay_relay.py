#!/usr/bin/env python3
"""A TCP relay that adds a fixed one-way delay in each direction (this kernel has no netem).

    delay_relay.py LISTEN_HOST:PORT TARGET_HOST:PORT --delay-ms 20

Every connection accepted on LISTEN is relayed to TARGET. Bytes read from either side are held
until `delay` has passed since they were read, then written to the other side in order, so each
direction sees `delay` of extra latency and a round trip sees twice that, while throughput is not
limited (the tbf qdisc on the upstream's veth does that). Bytes are not reordered or dropped; a
side's EOF is passed on after the bytes before it. Only the Python standard library is used.
Prints `listening HOST:PORT` once it accepts connections (port 0 picks a free port).
"""

import argparse
import asyncio
import sys
import time

READ_SIZE = 256 * 1024


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copies reader to writer, each chunk released `delay` seconds after it was read."""
    # Bounded so a slow writer stops the reader (TCP backpressure) instead of buffering a blob.
    queue: asyncio.Queue = asyncio.Queue(maxsize=64)

    async def read_side() -> None:
        try:
            while True:
                data = await reader.read(READ_SIZE)
                await queue.put((time.monotonic() + delay, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((time.monotonic(), b""))

    async def write_side() -> None:
        try:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    await asyncio.gather(read_side(), write_side())


async def handle(client_r, client_w, target: tuple[str, int], delay: float) -> None:
    try:
        up_r, up_w = await asyncio.open_connection(*target)
    except OSError as e:
        print(f"delay_relay: cannot reach {target[0]}:{target[1]}: {e}", file=sys.stderr)
        client_w.close()
        return
    try:
        await asyncio.gather(pump(client_r, up_w, delay), pump(up_r, client_w, delay))
    finally:
        for w in (up_w, client_w):
            w.close()


def split_addr(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{s!r} is not HOST:PORT")
    return host, int(port)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("listen", type=split_addr)
    ap.add_argument("target", type=split_addr)
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay added in each direction")
    args = ap.parse_args()
    if args.delay_ms < 0:
        print("delay_relay: --delay-ms must be >= 0", file=sys.stderr)
        return 2
    delay = args.delay_ms / 1000.0
    server = await asyncio.start_server(lambda r, w: handle(r, w, args.target, delay), *args.listen)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(0)
