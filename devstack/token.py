"""Print a local-stack access token: ``python -m devstack.token --user alice --tenant acme --role admin``."""

from __future__ import annotations

import argparse

from devstack.auth import make_token


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--user", default="alice")
    parser.add_argument("--tenant", default="acme")
    parser.add_argument("--role", default="user", choices=["user", "admin"])
    parser.add_argument("--ttl", type=int, default=12 * 3600, help="lifetime in seconds")
    args = parser.parse_args(argv)
    print(make_token(args.user, args.tenant, args.role, args.ttl))


if __name__ == "__main__":
    main()
