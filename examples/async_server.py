"""An asyncio server streaming tokens to concurrent clients, one monitored call per request.

    python examples/async_server.py --requests 200 --concurrency 16

The server speaks a toy line protocol on 127.0.0.1: a prompt line in, then tokens out one per
line and an empty line. Each request runs an async generator under ``@monitored_inference``:
concurrent requests keep their own context (tokens, TTFT, errors) across ``await``; an empty
prompt fails and is recorded with ``error.type``. A built-in load generator plays the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import AsyncIterator

import bitnet_obs


@bitnet_obs.monitored_inference(model="bitnet-b1.58-2B-4T", operation="chat")
async def generate(prompt: str) -> AsyncIterator[str]:
    if not prompt:
        raise ValueError("empty prompt")
    bitnet_obs.current_inference().add_input_tokens(len(prompt.split()))
    await asyncio.sleep(0.02)  # prefill (await your inference engine here)
    for word in prompt.split()[::-1]:
        await asyncio.sleep(random.uniform(0.001, 0.004))  # one decode step
        yield word


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    prompt = (await reader.readline()).decode().strip()
    try:
        async for token in generate(prompt):
            writer.write(token.encode() + b"\n")
            await writer.drain()
    except ValueError as exc:
        writer.write(f"error: {exc}\n".encode())
    writer.write(b"\n")
    await writer.drain()
    writer.close()


async def client(port: int, prompt: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(prompt.encode() + b"\n")
    await writer.drain()
    lines = 0
    while (await reader.readline()) not in (b"\n", b""):
        lines += 1
    writer.close()
    await writer.wait_closed()
    return lines


async def serve(requests: int, concurrency: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with limit:
            prompt = "" if i % 20 == 19 else f"request {i} asks the model something short"
            return await client(port, prompt)

    async with server:
        lines = await asyncio.gather(*(one(i) for i in range(requests)))
    print(f"served {requests} requests on 127.0.0.1:{port}, {sum(lines)} lines streamed")


def main() -> None:
    parser = argparse.ArgumentParser(description="An asyncio server under bitnet-obs.")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    telemetry = bitnet_obs.configure()
    print(f"metrics: {telemetry.metrics_url or 'pushed (see OTEL_METRICS_EXPORTER)'}")
    asyncio.run(serve(args.requests, args.concurrency))
    bitnet_obs.shutdown()


if __name__ == "__main__":
    main()
