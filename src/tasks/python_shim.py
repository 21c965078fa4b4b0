# cauce's bridge to a Python function: imports the module, calls the function with the
# task's params as keyword arguments, and writes the returned value as JSON for cauce.
import asyncio
import importlib
import inspect
import json
import os
import sys
import traceback

module_name, function_name = sys.argv[1], sys.argv[2]
params = json.loads(os.environ.get("CAUCE_PY_PARAMS") or "{}")
try:
    module = importlib.import_module(module_name)
except Exception:
    traceback.print_exc()
    print(f"cauce: cannot import module {module_name!r}", file=sys.stderr)
    sys.exit(3)
function = getattr(module, function_name, None)
if not callable(function):
    print(f"cauce: module {module_name!r} has no function {function_name!r}", file=sys.stderr)
    sys.exit(3)
try:
    result = function(**params) if isinstance(params, dict) else function(params)
    if inspect.isawaitable(result):
        result = asyncio.run(result)
except Exception:
    traceback.print_exc()
    sys.exit(1)
with open(os.environ["CAUCE_OUTPUT_FILE"], "w", encoding="utf-8") as out:
    json.dump(result, out, default=str)
