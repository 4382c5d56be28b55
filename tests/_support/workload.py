"""A separate process configured only by environment variables (run with ``python -m``).

Makes ``--calls`` monitored calls (half plain, half streamed), prints ``READY <metrics url>``,
then waits for a line on stdin (or ``--linger`` seconds) before shutting down.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

import bitnet_obs


@bitnet_obs.monitored_inference(model="workload-model", operation="chat")
def call(n: int) -> list[int]:
    return list(range(n))


@bitnet_obs.monitored_inference(model="workload-model", operation="chat")
def stream(n: int) -> Iterator[int]:
    yield from range(n)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--linger", type=float, default=None)
    parser.add_argument("--shutdown-timeout", type=float, default=None)
    args = parser.parse_args()
    telemetry = bitnet_obs.configure()
    for i in range(args.calls):
        if i % 2:
            list(stream(3))
        else:
            call(3)
    bitnet_obs.record_fallback("cuda:0", "cpu", "out_of_memory")
    print("READY", telemetry.metrics_url or "-", flush=True)
    if args.linger is not None:
        time.sleep(args.linger)
    else:
        sys.stdin.readline()
    started = time.monotonic()
    ok = bitnet_obs.shutdown(args.shutdown_timeout)
    print(f"SHUTDOWN ok={ok} seconds={time.monotonic() - started:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
