"""`python -m worker.simulator --host 127.0.0.1 --port 8090`: run the Gemini simulator."""

from __future__ import annotations

import argparse

from .app import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.simulator",
                                     description="Gemini-protocol simulator (v1beta REST).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
