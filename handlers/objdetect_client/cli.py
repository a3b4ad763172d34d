"""objdetect-client: send images to an objdetect deployment and keep what it found.

  objdetect-client detect photos/ --out results.jsonl              # a folder, recursively
  objdetect-client detect s3://bucket/prefix --list urls.txt --render boxes/
  objdetect-client evaluate --annotations instances.json --images val/ | jq .mAP
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from . import __version__, sources
from .client import DEFAULT_ENDPOINT, Client, Retry, Unreachable, normalize_endpoint
from .coco import GroundTruth, require_pycocotools
from .result import Result
from .results_file import ResultsFile, load

API_KEY_ENV = "OBJDETECT_API_KEY"  # safer than --api-key: a key on a command line lands in shell history
ENDPOINT_ENV = "OBJDETECT_ENDPOINT"

# Exit statuses: a script tells a refused image (its own input) from a usage error and from a
# service it could not reach, and retries only the last.
OK, REFUSED, USAGE, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130

EPILOG = f"""\
environment:
  {ENDPOINT_ENV}  the default --endpoint
  {API_KEY_ENV}   the default --api-key (keeps the key out of shell history)

exit status:
  {OK}    every image answered
  {REFUSED}    some images refused or failed: one line each on stderr, their errors in the results
  {USAGE}    usage: a bad option, source or file; nothing was sent
  {UNREACHABLE}    service unreachable: at the start, or --max-connection-failures images in a row
       got no answer
  {INTERRUPTED}  interrupted (Ctrl-C); with --out, --resume sends the rest
"""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # a bad option exits 2 here, before anything is sent
    if args.resume and not args.out:
        args.usage_error("--resume needs --out: the results file says which images are done")
    if args.coco_out and not args.annotations:
        args.usage_error("--coco-out needs --annotations: COCO results are a ground truth's image and category ids")
    try:
        return args.command(args)
    except Unreachable as error:
        _say(str(error))
        return UNREACHABLE
    except KeyboardInterrupt:
        _say("interrupted")
        return INTERRUPTED
    except (sources.SourceError, OSError, ValueError, RuntimeError) as error:
        _say(str(error))
        return USAGE


def detect(args: argparse.Namespace) -> int:
    truth = GroundTruth(args.annotations) if args.annotations else None
    names = sources.expand([*args.sources, *(sources.read_list(args.list) if args.list else [])])
    if not names:
        raise ValueError("no images: give files, folders, URLs or s3:// prefixes (or --list)")
    return send(names, args, truth, echo=not args.out)[1]


def evaluate(args: argparse.Namespace) -> int:
    """Prints the summary JSON alone on stdout (`| jq .mAP`): per-image results go to --out only,
    failures and pycocotools' table to stderr."""
    require_pycocotools()  # before sending every image, not after
    truth = GroundTruth(args.annotations)
    if not args.images.is_dir():
        raise ValueError(f"--images {args.images}: no such folder")
    results, status = send([str(args.images / name) for name in truth.file_names()], args, truth, echo=False)
    if status == INTERRUPTED:
        return status
    labels = {d.label for result in results.values() for d in result.detections}
    if labels and not labels & truth.categories.keys():
        _say(f"none of the model's labels ({', '.join(sorted(labels))}) is a category of {args.annotations}")
    failed = sum(not result.ok for result in results.values())
    print(json.dumps({"images": len(results), "failed": failed, **truth.evaluate(results.values())}))
    return status


def send(names: list[str], args: argparse.Namespace, truth: GroundTruth | None,
         echo: bool) -> tuple[dict[str, Result], int]:
    """Checks the endpoint, then detects in every name not already in --out (with --resume),
    writing each result as it comes (to --out, else to stdout when `echo`), one line on stderr per
    failed image, a progress bar and a summary on stderr, and --coco-out in `truth`'s ids. Returns
    every name's result and the exit status (0, 1, 130); raises Unreachable, after the summary,
    when the service cannot be reached at the start or stops answering during the run."""
    client = Client(args.endpoint, args.model, args.model_version, args.api_key, args.timeout,
                    Retry(attempts=args.retries + 1))
    options = {"threshold": args.threshold, "classes": args.classes, "max_detections": args.max_detections}
    out = ResultsFile(Path(args.out), args.resume) if args.out else None
    pending = [name for name in names if out is None or name not in out.done]
    if args.render:
        args.render.mkdir(parents=True, exist_ok=True)
    if pending:
        client.check()  # before the results file is opened: an unreachable service leaves it as it was
    results: dict[str, Result] = {}
    failures: Counter[str] = Counter()
    started, interrupted, unreachable = time.monotonic(), False, None

    bar = tqdm(total=len(pending), unit="img", file=sys.stderr, disable=args.quiet or not pending, dynamic_ncols=True)
    try:
        stream = client.detect_many(pending, args.concurrency, give_up_after=args.max_connection_failures,
                                    render_to=args.render, **options)
        with contextlib.closing(stream), out or contextlib.nullcontext():
            for result in stream:
                results[result.source] = result
                if out:
                    out.write(result)
                elif echo:
                    print(json.dumps(result.to_json()), flush=True)
                if not result.ok:
                    failures[result.error] += 1
                    tqdm.write(f"objdetect-client: {_failure(result)}", file=sys.stderr)
                    bar.set_postfix(failed=failures.total(), refresh=False)
                bar.update()
    except KeyboardInterrupt:
        interrupted = True
    except Unreachable as error:
        unreachable = error
    finally:
        bar.close()
    elapsed = time.monotonic() - started
    summary = (f"{len(results)} images in {elapsed:.1f} s ({len(results) / max(elapsed, 1e-9):.1f} images/s): "
               f"{len(results) - failures.total()} ok, {failures.total()} failed")
    if failures:
        summary += " (" + ", ".join(f"{code}: {count}" for code, count in failures.most_common()) + ")"
    if len(names) > len(pending):
        summary += f"; {len(names) - len(pending)} already in {args.out}"
    if interrupted or unreachable:
        summary += (f"; {'interrupted' if interrupted else 'stopped'} with {len(pending) - len(results)} not sent"
                    + (": --resume sends them" if out else ""))
    _say(summary)
    if unreachable:
        raise unreachable
    asked = set(names)
    everything = {name: result for name, result in load(out.path).items() if name in asked} if out else results
    if args.coco_out and not interrupted:
        Path(args.coco_out).write_text(json.dumps(truth.detections(everything.values())))
    return everything, INTERRUPTED if interrupted else REFUSED if failures else OK


def _failure(result: Result) -> str:
    """One line: the source, the error code (and HTTP status), the message on one line."""
    line = f"{result.source}: {result.error}" + (f" ({result.status})" if result.status else "")
    message = " ".join((result.message or "").split())
    return f"{line}: {message[:300]}" if message else line


def _say(message: str) -> None:
    print(f"objdetect-client: {message}", file=sys.stderr, flush=True)


def _endpoint(text: str) -> str:
    try:
        return normalize_endpoint(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _number(kind: type, low: float, high: float = math.inf, *, low_open: bool = False):
    """An argparse type: a `kind` from low to high (above low when low_open); NaN and inf refused."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            bounds = (f"above {low:g}" if low_open else f"from {low:g} to {high:g}" if high < math.inf
                      else f"at least {low:g}")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    return parse


def _classes(text: str) -> list[str]:
    classes = [c.strip() for c in text.split(",") if c.strip()]
    if not classes:
        raise argparse.ArgumentTypeError("no class names (comma-separated labels, e.g. person,dog)")
    return classes


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="objdetect-client", description=__doc__, epilog=EPILOG,
                                     formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the client's version and exit")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", title="commands",
                                     help="objdetect-client COMMAND --help for its options")
    detect_parser = commands.add_parser("detect", help="detect objects in images, folders, URLs, s3:// prefixes",
                                        description="Detect objects in images; one JSON line per image.",
                                        epilog=EPILOG, formatter_class=formatter)
    detect_parser.add_argument("sources", nargs="*", metavar="SOURCE",
                               help="an image file, a folder (recursively, by extension), an http(s) URL "
                                    "(the server downloads it) or s3://bucket/prefix (your AWS credentials)")
    detect_parser.add_argument("--list", metavar="FILE", help="more sources, one per line (- for stdin)")
    detect_parser.add_argument("--annotations", metavar="INSTANCES_JSON",
                               help="a COCO ground truth whose image and category ids --coco-out uses")
    detect_parser.set_defaults(command=detect, usage_error=detect_parser.error)
    evaluate_parser = commands.add_parser(
        "evaluate", help="the deployed model's COCO mAP against annotations (summary JSON on stdout)",
        description="Send every image of a COCO ground truth; print the mAP as one JSON object on stdout.",
        epilog=EPILOG, formatter_class=formatter)
    evaluate_parser.add_argument("--annotations", required=True, metavar="INSTANCES_JSON",
                                 help="the COCO ground truth (instances JSON): the images to send and what is in them")
    evaluate_parser.add_argument("--images", required=True, type=Path, metavar="DIR",
                                 help="the folder the annotations' file_name entries are relative to")
    evaluate_parser.set_defaults(command=evaluate, usage_error=evaluate_parser.error)
    default_endpoint = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    for sub, threshold in ((detect_parser, None), (evaluate_parser, 0.05)):  # mAP counts low scores too
        sub.add_argument("--endpoint", type=_endpoint, default=default_endpoint,
                         help=f"the server's address; http:// when no scheme is given (default ${ENDPOINT_ENV}, "
                              f"else {DEFAULT_ENDPOINT})")
        sub.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                         help=f"sent as X-API-Key (default ${API_KEY_ENV}, which keeps it out of shell history)")
        sub.add_argument("--model", default="detector", help="the model's name on the server (default detector)")
        sub.add_argument("--model-version", metavar="VERSION",
                         help="a version of the model (default: the one the server serves by default)")
        sub.add_argument("--threshold", type=_number(float, 0, 1), default=threshold,
                         help="lowest score returned, from 0 to 1 (default: the server's, 0.5" +
                              (f"; {threshold} here" if threshold else "") + ")")
        sub.add_argument("--classes", type=_classes, metavar="LABELS", help="only these labels, comma-separated")
        sub.add_argument("--max-detections", type=_number(int, 1), metavar="N",
                         help="at most N detections per image, the best (default: the server's)")
        sub.add_argument("--concurrency", type=_number(int, 1), default=4, metavar="N",
                         help="requests in flight (default 4)")
        sub.add_argument("--retries", type=_number(int, 0), default=4, metavar="N",
                         help="resends on connection errors, 503 and 507, with backoff and jitter (default 4)")
        sub.add_argument("--max-connection-failures", type=_number(int, 1), default=5, metavar="N",
                         help="stop, exit 3, after N images in a row got no answer, each after its retries "
                              "(default 5)")
        sub.add_argument("--timeout", type=_number(float, 0, low_open=True), default=60, metavar="SECONDS",
                         help="wait for each answer at most this long (default 60; connecting: at most 10)")
        sub.add_argument("--out", metavar="RESULTS_JSONL",
                         help="one JSON line per image" + (" (default: stdout)" if sub is detect_parser else ""))
        sub.add_argument("--resume", action="store_true",
                         help="skip images --out already holds (failures of the service are sent again)")
        sub.add_argument("--coco-out", metavar="FILE",
                         help="also write COCO detection results JSON, for pycocotools" +
                              (" (needs --annotations)" if sub is detect_parser else ""))
        sub.add_argument("--render", type=Path, metavar="DIR", help="save each image with its boxes drawn, as JPEG")
        sub.add_argument("--quiet", action="store_true",
                         help="no progress bar (failures and the summary are still printed)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
