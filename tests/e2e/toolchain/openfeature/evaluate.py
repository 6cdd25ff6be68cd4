"""Evaluates boolean flags from a flagd flag file the way an application does: the OpenFeature
SDK with the flagd provider in file (offline, in-process) mode, at the current time.

Usage: evaluate.py FILE FLAG [FLAG...]
Prints one JSON object per flag: {"flag", "value", "variant", "reason", "error"}.
The default value passed to the SDK is null-like (None), so a flag that cannot be evaluated
shows as such instead of looking like a real answer.
"""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType


def main() -> int:
    path, flags = sys.argv[1], sys.argv[2:]
    # Wait for the provider to load the file, as an app does before serving.
    api.set_provider_and_wait(FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=path))
    client = api.get_client()
    for flag in flags:
        details = client.get_boolean_details(flag, None)
        print(
            json.dumps(
                {
                    "flag": flag,
                    "value": details.value,
                    "variant": details.variant,
                    "reason": str(details.reason) if details.reason else None,
                    "error": details.error_message,
                    "error_code": str(details.error_code) if details.error_code else None,
                }
            )
        )
    api.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
