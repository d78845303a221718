"""The test tools over stdio: `python -m tests.mcpservers.stdio_server [--variant v2] [--linger]`.

`--linger` keeps the process alive for a minute after its stdin closes, as a badly behaved
server would: only a signal ends it then."""

import argparse
import sys
import time

from tests.mcpservers.toolbox import build_server

LINGER_SECONDS = 60


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="v1", choices=["v1", "v2"])
    parser.add_argument("--linger", action="store_true")
    args = parser.parse_args()
    print("test stdio server starting", file=sys.stderr, flush=True)
    build_server(args.variant).run("stdio")
    if args.linger:
        time.sleep(LINGER_SECONDS)


if __name__ == "__main__":
    main()
