"""CPU of ``mime.parse_message`` per message, on the first-sync bench's own mail, in one process.

The corpus is ``bench_initial_sync.py``'s (``benchlib.make_mail``, same seed and attachment share:
mostly 2-20 KB plain text, a few percent 100 KB-2 MB with a base64 attachment), plus the same
texts as ``multipart/alternative`` with an HTML copy (most real mail has that shape; the
generator does not make it). Each round parses every group once and reads the process CPU time
(``time.process_time``) around it; the table shows the median of the rounds in µs per message.

``--compare PATH`` also loads the ``mime.py`` of another checkout (``PATH`` is its root, e.g. a
``git worktree add /tmp/old <rev>``) and times it in the same rounds, alternating which goes
first, so that both see the same machine; it also checks that both give equal results.
Not a test: no assertion about speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import random
import statistics
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from types import ModuleType

import benchlib
from benchlib import ROOT, print_table, write_results

MIME_PATH = Path("layers/shared/mailsync/mime.py")


def load_mime(root: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, root / MIME_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def alternative(rng: random.Random, index: int, date: dt.datetime, size: int) -> bytes:
    """A text/plain + text/html alternative of about ``size`` bytes, headers as the generator's."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Sender {index % 97} <sender{index % 97}@example.com>"
    msg["To"] = "Bench User <bench@example.com>"
    msg["Subject"] = f"bench alternative {index}"
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = f"<bench-alt-{index}-{rng.getrandbits(32):08x}@bench.mailsync.test>"
    text = benchlib._text(rng, max(200, size // 2 - 300))
    paragraphs = "".join(f"<p>{line}</p>\n" for line in text.splitlines())
    msg.set_content(text)
    msg.add_alternative(f"<html><head><style>p{{margin:0}}</style></head><body>\n{paragraphs}</body></html>\n", "html")
    return msg.as_bytes()


def corpus(messages: int, attachment_share: float, seed: int) -> dict[str, list[bytes]]:
    # bench_initial_sync.generate's sequence of RNG calls, with a fixed date instead of "now".
    rng = random.Random(seed)
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    groups: dict[str, list[bytes]] = {"text": [], "attachment": [], "alternative": []}
    for i in range(messages):
        size, attachment = benchlib.realistic_size(rng, attachment_share)
        when = start - dt.timedelta(seconds=rng.uniform(3600, 28 * 86400))
        groups["attachment" if attachment else "text"].append(benchlib.make_mail(rng, i, when, size, attachment))
    alt_rng = random.Random(seed + 1)
    for i in range(messages // 4):
        size, _ = benchlib.realistic_size(alt_rng, 0.0)
        groups["alternative"].append(alternative(alt_rng, i, start, size))
    return groups


def cpu_seconds(parse: Callable[[bytes], object], messages: list[bytes]) -> float:
    started = time.process_time()
    for raw in messages:
        parse(raw)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="300 messages, 3 rounds")
    parser.add_argument("--messages", type=int, help="default 2000 (--small: 300)")
    parser.add_argument("--rounds", type=int, help="default 7 (--small: 3)")
    parser.add_argument("--attachment-share", type=float, default=0.04)
    parser.add_argument("--seed", type=int, default=20260)
    parser.add_argument("--compare", type=Path, help="root of another checkout whose mime.py to time alongside")
    args = parser.parse_args()
    messages = args.messages or (300 if args.small else 2000)
    rounds = args.rounds or (3 if args.small else 7)

    groups = corpus(messages, args.attachment_share, args.seed)
    modules = {"this": load_mime(ROOT, "mime_this")}
    if args.compare:
        modules["compare"] = load_mime(args.compare.resolve(), "mime_compare")
        for group in groups.values():
            for raw in group:
                # repr: each module has its own ParsedMessage class, which dataclass equality checks.
                if repr(modules["this"].parse_message(raw)) != repr(modules["compare"].parse_message(raw)):
                    raise SystemExit("the two mime.py give different results")

    samples: dict[tuple[str, str], list[float]] = {(m, g): [] for m in modules for g in groups}
    for r in range(rounds):
        order = list(modules) if r % 2 == 0 else list(reversed(modules))
        for name in order:
            for group, raws in groups.items():
                samples[(name, group)].append(cpu_seconds(modules[name].parse_message, raws))

    results: dict[str, dict[str, float]] = {}
    for name in modules:
        row: dict[str, float] = {}
        for group, raws in groups.items():
            row[f"{group}_us_per_message"] = statistics.median(samples[(name, group)]) / len(raws) * 1e6
        bench_mix = groups["text"] + groups["attachment"]
        total = statistics.median(
            [a + b for a, b in zip(samples[(name, "text")], samples[(name, "attachment")], strict=True)]
        )
        row["bench_mix_us_per_message"] = total / len(bench_mix) * 1e6
        results[name] = row
    headers = ["mime.py", "bench mix µs/msg", "text", "attachment", "alternative"]
    print_table(
        headers,
        [
            [
                name if name == "this" else f"{name} ({args.compare})",
                row["bench_mix_us_per_message"],
                row["text_us_per_message"],
                row["attachment_us_per_message"],
                row["alternative_us_per_message"],
            ]
            for name, row in results.items()
        ],
    )
    parameters = {
        "small": args.small,
        "messages": messages,
        "rounds": rounds,
        "attachment_share": args.attachment_share,
        "seed": args.seed,
        "groups": {group: len(raws) for group, raws in groups.items()},
        "compare": str(args.compare) if args.compare else None,
    }
    write_results("bench_mime", parameters, results)


if __name__ == "__main__":
    main()
