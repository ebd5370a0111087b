"""The Redis client's own CPU cost: ``python -m bench.redis_client``.

Measures, against a running Redis (``--url``, default
``redis://127.0.0.1:6379/0``), this process's CPU per ``PUBLISH`` (pipelined,
``--window`` in flight) and per message its subscriber receives (Redis
publishes them from a Lua script, so no publisher runs in this process).
See docs/performance.rst.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

from twisted.internet import defer, task

from signaling.backplane.redis import RedisClient, RedisSubscriber, parse_url

#: Publishes the same message ARGV[2] times on KEYS[1].
PUBLISH_MANY = b"for i = 1, tonumber(ARGV[2]) do redis.call('PUBLISH', KEYS[1], ARGV[1]) end"


async def ready(connection: Any, reactor: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not connection.connected:
        if time.monotonic() > deadline:
            raise SystemExit(f"no connection to Redis at {connection.address.host}")
        await task.deferLater(reactor, 0.01, lambda: None)


async def measure(reactor: Any, args: argparse.Namespace) -> dict[str, float]:
    address = parse_url(args.url)
    client = RedisClient(address, reactor=reactor)
    subscriber = RedisSubscriber(address, reactor=reactor)
    client.start()
    subscriber.start()
    try:
        await ready(client, reactor)
        await ready(subscriber, reactor)
        channel = f"bench:{uuid.uuid4().hex}".encode()
        message = b"x" * args.size
        figures: dict[str, float] = {}

        # PUBLISH, pipelined: a window of commands in flight at a time.
        for warming in (True, False):
            count = args.messages // 10 if warming else args.messages
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(count // args.window):
                sent = [client.publish(channel, message) for _ in range(args.window)]
                await sent[-1]
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        figures["publish_us_cpu"] = cpu / count * 1e6
        figures["publish_per_s"] = count / wall

        # Messages received by the subscriber, published by Redis itself in
        # batches, the next once the last has arrived: Redis drops a
        # subscriber whose unread messages pass its output buffer limit.
        received = 0
        expected = 0
        arrived: defer.Deferred[None] = defer.Deferred()

        def on_message(data: bytes) -> None:
            nonlocal received
            received += 1
            if received == expected:
                arrived.callback(None)

        await subscriber.subscribe(channel, on_message)
        script = client.script(PUBLISH_MANY)
        batch = max(1, min(10_000, 2_000_000 // max(1, len(message))))
        for warming in (True, False):
            count = args.messages // 10 if warming else args.messages
            count = max(batch, count // batch * batch)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(count // batch):
                expected += batch
                arrived = defer.Deferred()
                await client.run_script(script, [channel], [message, batch])
                await arrived.addTimeout(args.timeout, reactor)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        figures["receive_us_cpu"] = cpu / count * 1e6
        figures["receive_per_s"] = count / wall
        return figures
    finally:
        await client.stop()
        await subscriber.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_client", description=__doc__)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=1000, help="publishes in flight")
    parser.add_argument("--size", type=int, default=256, help="message bytes")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for messages")
    args = parser.parse_args(argv)
    args.messages = max(args.window, args.messages // args.window * args.window)

    async def run(reactor: Any) -> None:
        figures = await measure(reactor, args)
        print(
            f"{args.messages} messages of {args.size} bytes, {args.window} publishes in flight\n"
            f"PUBLISH: {figures['publish_us_cpu']:.2f} us CPU each"
            f" ({figures['publish_per_s'] / 1000:.0f}k/s)\n"
            f"received: {figures['receive_us_cpu']:.2f} us CPU each"
            f" ({figures['receive_per_s'] / 1000:.0f}k/s)"
        )

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
