"""Run one scenario's workload in a fresh interpreter: ``python -m tests.reliability._child
module:function '{"kwarg": ...}'``. ``configure()`` is once per process, so every workload that
configures bitnet-obs runs here; the function's dict comes back as the last stdout line."""

from __future__ import annotations

import importlib
import json
import sys


def main() -> int:
    target, raw = sys.argv[1], sys.argv[2]
    module_name, _, function_name = target.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    result = function(**json.loads(raw))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
