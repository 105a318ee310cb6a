"""`casting-inspect`: the exported model at work on the line.

  casting-inspect predict PATH... [--format csv|jsonl] [--out FILE]   decide image files, folders or globs
  casting-inspect serve [--host 127.0.0.1] [--port 8000]              the HTTP inspection service
  casting-inspect watch INBOX [--out DIR]                             decide photos as a camera drops them
  casting-inspect station SOURCE [--modbus H:P] [--opcua URL] [--mqtt H:P]  a camera stream in, signals to the line out
  casting-inspect about                                               which model, how it decides, where it came from
  casting-inspect review --watch-out OUT [--line data/line]           label the photos the watcher left for a person
  casting-inspect import-line FOLDER --map NG=defective --map OK=ok   add a folder the plant already labelled

Exit status: 0 all decided; 3 some files were skipped (each named on stderr with its reason); 1 an error.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import io
import json
import math
import os
import socket
import stat
import sys
from pathlib import Path

from tqdm import tqdm

from casting_inspection.core.errors import InspectionError
from casting_inspection.core.files import atomic_path
from casting_inspection.core.text import printable, spreadsheet_cell
from casting_inspection.serving.station.command import add_station, address

SKIPPED_EXIT = 3
MAX_MAPS = 100  # --map options of one import-line
MAX_THREADS = 256  # --threads: more than a machine's cores only slows ONNX Runtime down
DEFAULT_MODEL = Path("models/model.onnx")


def expand(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]], list[str]]:
    """Files as given, folders walked (sorted), glob patterns expanded (a folder they match walked too): the files
    to decide, what cannot be decided with why, and the files of those folders that are no photo (named, not
    decided). A file's name alone never decides: a camera's photo named `.jfif` or without a suffix is a photo."""
    from casting_inspection.data.images import entry_problem

    files, missing, ignored = {}, {}, {}
    for item in inputs:
        path = Path(item)
        if not item:  # Path("") is the current folder: an unset variable must not decide everything under it
            missing.setdefault("''", "an empty path (an unset variable?); name a file or folder")
        elif _is_folder(path):
            found, unreadable = _walk(path, files, missing, ignored)
            if not found and not unreadable:
                missing.setdefault(item, "folder holds no photo" + _ignored_note(path, ignored))
        elif _lexists(path):
            reason = entry_problem(path)
            files.setdefault(path, None) if reason is None else missing.setdefault(item, reason)
        elif glob.has_magic(item):
            matches, found, unreadable = sorted(Path(p) for p in glob.glob(item, recursive=True)), 0, 0
            for match in matches:  # as a folder's files: what is no photo is named and left
                if _is_folder(match):
                    photos, problems = _walk(match, files, missing, ignored)
                    found, unreadable = found + photos, unreadable + problems
                elif (reason := entry_problem(match)) is not None:
                    missing.setdefault(str(match), reason)
                    unreadable += 1
                else:
                    found += _sort(match, files, ignored)
            if not matches:
                missing.setdefault(item, "pattern matches no file")
            elif not found and not unreadable:
                missing.setdefault(item, "pattern matches no photo")
        else:
            missing.setdefault(item, "no such file or folder")
    return list(files), list(missing.items()), sorted(ignored)


def _walk(folder: Path, files: dict, missing: dict, ignored: dict) -> tuple[int, int]:
    """Add a folder's files to `files` (photos) or `ignored` (no photo), and what cannot be read to `missing`; how
    many photos and how many unreadable entries it holds."""
    from casting_inspection.data.images import walk_files

    found, problems = walk_files(folder)
    for name, reason in problems:
        missing.setdefault(name, reason)
    return sum(_sort(path, files, ignored) for path in found), len(problems)


def _sort(path: Path, files: dict, ignored: dict) -> bool:
    """File `path` as a photo to decide or as no photo; True for a photo."""
    from casting_inspection.data.images import looks_like_photo

    photo = looks_like_photo(path)
    files.setdefault(path, None) if photo else ignored.setdefault(str(path), None)
    return photo


def _ignored_note(folder: Path, ignored: dict) -> str:
    inside = sum(Path(name).is_relative_to(folder) for name in ignored)
    return f" ({inside} file{'s' if inside != 1 else ''} in it ignored)" if inside else ""


def _lexists(path: Path) -> bool:
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:  # there, but out of reach: entry_problem says why
        pass
    return True


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a folder above it cannot be searched: entry_problem says so
        return False


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _thread_count(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be 0 (all cores) to {MAX_THREADS}, got {value}")
    return value


def _out_target(out: Path | None, files: list[Path]) -> Path | None:
    """Where --out writes: a link's target (the link stays), never a folder, device or pipe, nor a photo being decided.
    Checked before any photo is decided."""
    if out is None:
        return None
    try:
        target = out.resolve() if out.is_symlink() else out
        here = out.stat()  # through every link: what is written is what it points at
    except FileNotFoundError:
        return target
    except (OSError, RuntimeError) as exc:  # a loop of links, a folder that cannot be searched
        why = exc.strerror if isinstance(exc, OSError) else "a loop of links"
        raise InspectionError(f"--out {out}: cannot be reached ({why}); name a file in a writable folder") from None
    if not stat.S_ISREG(here.st_mode):
        raise InspectionError(f"--out {out}: not a plain file (a folder, device or pipe); name a file, or leave --out out")
    for path in files:
        with contextlib.suppress(OSError):
            if os.path.samestat(here, path.stat()):
                raise InspectionError(f"--out {out} is one of the photos to decide ({path}); name another file")
    return target


def _write_rows(rows: list[dict], fmt: str, out: Path | None) -> None:
    """CSV or JSON lines to --out or standard output. A name that is not UTF-8 keeps its own bytes; on a terminal,
    control characters are shown as escapes, so that a file name cannot drive it."""
    to_terminal = out is None and sys.stdout is not None and sys.stdout.isatty()
    shown = printable if to_terminal else str
    buffer = io.StringIO()
    if fmt == "csv":
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["path"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: spreadsheet_cell(shown(v)) if isinstance(v, str) else v for k, v in row.items()} for row in rows)
    else:
        for row in rows:
            buffer.write(json.dumps(row) + "\n")  # every control character and stray byte escaped
    data = buffer.getvalue().encode("utf-8", "surrogateescape")
    if out is None:
        _to_stdout(data)
        return
    try:
        with atomic_path(out) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise InspectionError(f"--out {out}: cannot write ({exc.strerror}); name a file in a writable folder") from None


def _to_stdout(data: bytes) -> None:
    if sys.stdout is None:
        raise InspectionError("standard output is closed; name a file with --out")
    try:
        sys.stdout.flush()
        if hasattr(sys.stdout, "buffer"):
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:  # a text stream without bytes beneath (a notebook's, a StringIO)
            sys.stdout.write(data.decode("utf-8", "surrogateescape"))
    except BrokenPipeError:
        raise  # a reader that stopped early (| head): main ends quietly
    except OSError as exc:
        raise InspectionError(f"cannot write the rows to standard output ({exc.strerror}); name a file with --out") from None


def predict(args: argparse.Namespace) -> int:
    from casting_inspection.core.decision import DECISIONS
    from casting_inspection.data.images import BadImage, read_photo
    from casting_inspection.serving.inference import Inspector, Result

    inspector = Inspector(args.model, threads=args.threads)
    maps = _maps_folder(args.maps, inspector)
    files, missing, ignored = expand(args.paths)
    out = _out_target(args.out, files)
    for item in ignored:
        print(printable(f"ignored {item}: no photo (neither an image's name nor an image's first bytes)"), file=sys.stderr)
    for item, reason in missing:
        print(printable(f"skipped {item}: {reason}"), file=sys.stderr)
    results, arrays, anomaly_maps = [], [], ([] if maps else None)
    batches = range(0, len(files), args.batch_size)
    for start in tqdm(
        batches, desc="predict", unit="batch", file=sys.stderr, disable=None if len(files) > args.batch_size else True
    ):
        chunk = files[start : start + args.batch_size]
        named, unreadable = [], []
        for path in chunk:
            try:
                named.append((str(path), read_photo(path, inspector.spec.max_file_bytes)))
            except BadImage as exc:
                unreadable.append(Result(str(path), "", None, inspector.threshold, inspector.version, str(exc)))
        for result in unreadable + inspector.inspect(named, args.batch_size, decoded=arrays, maps=anomaly_maps):
            if result.error:
                print(printable(f"skipped {result.path}: {result.error}"), file=sys.stderr)
            results.append(result)
    decided = [r for r in results if not r.error]
    _write_rows([{k: v for k, v in r.row().items() if k != "error"} for r in decided], args.format, out)
    if maps:  # after the rows: a full disk for the maps never costs the decisions
        _write_maps(maps, decided, arrays, anomaly_maps, inspector.rule.anomaly_threshold)
    if decided and len(decided) >= args.drift_min_images:
        warning = _drift(inspector, arrays)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    skipped = len(missing) + len(results) - len(decided)
    counts = {d: sum(r.decision == d for r in decided) for d in DECISIONS}
    summary = ", ".join(f"{n} {d}" for d, n in counts.items() if n or d != "review")
    ignored_note = f"; {len(ignored)} ignored (no photo)" if ignored else ""
    print(f"predict: {len(decided)} decided ({summary}); {skipped} skipped{ignored_note}", file=sys.stderr)
    return SKIPPED_EXIT if skipped else 0


def _maps_folder(folder: Path | None, inspector) -> Path | None:
    """The --maps folder, made; a model without a model of good parts has no map to write."""
    if folder is None:
        return None
    if inspector.rule.anomaly_threshold is None:
        raise InspectionError(
            f"--maps {folder}: {inspector.path} has no anomaly map; export it with this version (dvc repro export)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InspectionError(f"--maps {folder}: cannot make the folder ({exc.strerror}); name a writable one") from None
    return folder


def _write_maps(folder: Path, decided: list, arrays: list, anomaly_maps: list, threshold: float) -> None:
    """One overlay per decided photo: the anomaly map over the photo, red where it departs from a good part."""
    from casting_inspection.serving.maps import map_name, write_overlay

    taken: set[str] = set()
    for result, image, anomaly_map in zip(decided, arrays, anomaly_maps):
        try:
            write_overlay(folder / map_name(result.path, taken), image, anomaly_map, threshold)
        except OSError as exc:
            raise InspectionError(
                printable(f"--maps {folder}: cannot write the map of {result.path} ({exc.strerror}); name a writable folder")
            ) from None


def _drift(inspector, arrays: list) -> str | None:
    """Input drift of this batch against the model's training range (the warning a line operator needs)."""
    import numpy as np

    from casting_inspection.data import drift

    report = drift.drift_report(drift.image_statistics(np.stack(arrays)), inspector.drift_reference)
    return drift.drift_warning(report)


def serve(args: argparse.Namespace) -> int:
    """The service behind its limits; no token means loopback only, so that no other machine reaches it unasked."""
    import uvicorn

    from casting_inspection.serving import service
    from casting_inspection.serving.inference import Inspector

    for flag in ("max_upload_mb", "max_files", "max_body_mb", "header_timeout", "body_timeout", "max_active", "max_connections"):
        value = getattr(args, flag)
        if not (value > 0 and math.isfinite(value)):
            raise InspectionError(f"--{flag.replace('_', '-')} must be a number above 0 (got {value})")
    token = service.resolve_token(args.token_file)
    if token is None and not service.is_loopback(args.host):
        raise InspectionError(
            f"refusing to serve {args.host} without a token: set {service.TOKEN_ENV} or pass --token-file "
            "(without one, only 127.0.0.1, ::1 or localhost)"
        )
    inspector = Inspector(args.model, threads=args.threads)
    limits = service.Limits(
        max_upload_bytes=int(args.max_upload_mb * 1e6),
        max_files=args.max_files,
        max_body_bytes=int(args.max_body_mb * 1e6),
        body_timeout=args.body_timeout,
        max_active=args.max_active,
    )
    app = service.create_app(inspector, limits, token=token, window=args.window)
    listening = _listen(args.host, args.port)  # before the first line: a port in use is one error, not a start
    host, port = listening.getsockname()[:2]
    print(
        f"serve: model {inspector.version} on http://{_url_host(host)}:{port} (POST /predict, GET /health, GET /model, GET /metrics)",
        file=sys.stderr,
    )
    if token:
        print("serve: every endpoint but /health requires 'Authorization: Bearer <token>'", file=sys.stderr)
    else:
        print(
            f"serve: unauthenticated, so local only ({args.host}); set {service.TOKEN_ENV} or --token-file to serve other machines",
            file=sys.stderr,
        )
    config = uvicorn.Config(
        app,
        log_level="warning",
        workers=1,
        http=service.header_deadline_protocol(args.header_timeout),
        limit_concurrency=args.max_connections,
    )
    uvicorn.Server(config).run(sockets=[listening])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """The service's socket, bound here so that an address in use or not this machine's is one line naming it.
    `localhost` is 127.0.0.1: a hosts file that names ::1 first would leave IPv4 clients refused."""
    host = "127.0.0.1" if host == "localhost" else host
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listening = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InspectionError(
            f"--host {host}: not an address of this machine ({exc}); use 127.0.0.1 or this machine's address"
        ) from None
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a restart reuses the port at once
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        raise InspectionError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror}); choose a free port or stop what holds it"
        ) from None
    return listening


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _port(text: str) -> int:
    """A TCP port: 0 asks the system for a free one (the start line says which)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number: give 1 to 65535 (0: any free port)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number: give 1 to 65535 (0: any free port)")
    return port


def _serve_arguments(sub: argparse.ArgumentParser) -> None:
    """The service's limits, deadlines and token (see `service`: each bounds what one client can cost the server)."""
    sub.add_argument(
        "--max-body-mb", type=float, default=64.0, help="largest request body, counted as it arrives, in MB (default: 64)"
    )
    sub.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds a client has to send its request headers (default: 10)"
    )
    sub.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        help="seconds a client has to send its whole request body, from the server's first read (default: 60)",
    )
    sub.add_argument(
        "--window", type=_positive_int, default=200, help="parts in /metrics' rolling rates and drift (default: 200)"
    )
    sub.add_argument("--max-active", type=int, default=2, help="uploads read and decided at once; the others wait (default: 2)")
    sub.add_argument(
        "--max-connections",
        type=int,
        default=64,
        help="open connections before new requests get 503 (uvicorn's limit_concurrency; default: 64)",
    )
    sub.add_argument(
        "--token-file",
        type=Path,
        help="file holding the bearer token every endpoint but /health requires (else $CASTING_INSPECT_TOKEN; "
        "with neither, only a loopback --host is allowed)",
    )


def watch(args: argparse.Namespace) -> int:
    """Exit 2 when another watcher holds the inbox (so a service manager can tell it from a fault); with
    --once, 3 when a complete photo could not be filed (it stays in the inbox, named on stderr)."""
    from casting_inspection.serving.health import watched
    from casting_inspection.serving.inference import Inspector
    from casting_inspection.serving.watch.inbox import WatchBusy
    from casting_inspection.serving.watch.watcher import watch_folder

    for option, value in (
        ("--log-wait", args.log_wait),
        ("--reject-after", args.reject_after),
        ("--settle", args.settle),
        ("--poll", args.poll),
    ):
        if not (value >= 0 and math.isfinite(value)):  # NaN or infinity: a photo would wait unnamed for ever
            raise InspectionError(f"{option} must be 0 or more seconds (got {value})")
    if not args.poll > 0:
        raise InspectionError(f"--poll must be above 0 seconds (got {args.poll})")
    inspector = Inspector(args.model, threads=args.threads)
    health, metrics_server = watched(inspector, args.metrics, args.window)
    try:
        left = watch_folder(
            inspector,
            Path(args.inbox),
            Path(args.out) if args.out else Path(args.inbox) / "sorted",
            poll_seconds=args.poll,
            settle_seconds=args.settle,
            once=args.once,
            log_wait=args.log_wait,
            reject_after=args.reject_after,
            health=health,
        )
    except WatchBusy as exc:
        print(f"casting-inspect watch: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
    return SKIPPED_EXIT if left else 0


def about(args: argparse.Namespace) -> int:
    from casting_inspection.serving.inference import Inspector

    print(json.dumps(Inspector(args.model).info(), indent=2))
    return 0


def _add_watch(commands, common) -> None:
    """The watch subcommand's arguments (its own function: build_parser stays short)."""
    sub = commands.add_parser(
        "watch",
        help="decide photos as they arrive in a folder, then sort them",
        description="Decide photos as they arrive in INBOX, log each decision, move each photo into OUT/<decision>/. "
        "Exit status: 0 done (--once); 130 stopped by SIGTERM or Ctrl-C; 1 an error; 2 another watcher holds INBOX; "
        "3 (--once) a complete photo could not be filed and stays in the inbox.",
    )
    sub.add_argument("inbox", help="the folder the camera writes to")
    sub.add_argument("--out", help="where ok/, defective/, review/, rejected/ and the log go (default: INBOX/sorted)")
    sub.add_argument("--poll", type=float, default=0.5, help="seconds between looks at the inbox (default: 0.5)")
    sub.add_argument(
        "--settle", type=float, default=1.0, help="a file is complete when unchanged for this many seconds (default: 1.0)"
    )
    sub.add_argument("--once", action="store_true", help="decide what is complete now, then stop")
    sub.add_argument(
        "--metrics", type=address, metavar="HOST:PORT", help="serve the line's health for Prometheus here (rolling rates, drift)"
    )
    sub.add_argument("--window", type=_positive_int, default=200, help="parts in the rolling rates and drift (default: 200)")
    sub.add_argument(
        "--log-wait",
        type=float,
        default=60.0,
        help="seconds to wait for a log another process holds locked before the photos wait for the next look "
        "(with --once: exit 1, photos left in the inbox) (default: 60)",
    )
    sub.add_argument(
        "--reject-after",
        type=float,
        default=30.0,
        help="a file that is not a usable image (a photo still being written?) stays in the inbox until unchanged "
        "this many seconds, then goes to rejected/ (default: 30)",
    )
    common(sub)
    sub.set_defaults(run=watch)


def _login_name(given: str | None) -> str:
    """Who labels: --inspector, else the login name; every verdict carries it."""
    import getpass

    from casting_inspection.data.line import check_inspector

    if given is None:
        try:
            given = getpass.getuser()
        except (KeyError, OSError):
            raise InspectionError("cannot tell who is labelling: pass --inspector NAME") from None
    return check_inspector(given)


class _Maps(argparse.Action):
    """--map, collected; refused at the first past MAX_MAPS (a plant names a handful of classes), before argparse
    reads the rest: it takes seconds over thousands of options."""

    def __call__(self, parser, namespace, values, option_string=None):
        maps = [*getattr(namespace, self.dest), values]
        if len(maps) > MAX_MAPS:
            parser.exit(
                1,
                printable(f"{parser.prog}: error: more than {MAX_MAPS} --map options; import the class folders in parts") + "\n",
            )
        setattr(namespace, self.dest, maps)


def _verdict_maps(maps: list[str]) -> dict[str, str]:
    """--map NAME=VERDICT, each sub-folder once."""
    mapping = {}
    for item in maps:
        name, sep, verdict = item.partition("=")
        if not sep or not name or not verdict:
            raise InspectionError(f"--map {item}: write it as SUBFOLDER=VERDICT, e.g. --map NG=defective")
        if name in mapping and mapping[name] != verdict:
            raise InspectionError(f"--map {item}: sub-folder {name!r} is already mapped to {mapping[name]}")
        mapping[name] = verdict
    return mapping


def import_line(args: argparse.Namespace) -> int:
    """Exit 3 when some files were skipped (each named on stderr with its reason), as predict does."""
    from casting_inspection.data.line import LABELS_NAME, import_folder, read_rows
    from casting_inspection.serving.inference import Inspector

    mapping, inspector = _verdict_maps(args.map), _login_name(args.inspector)
    model = Inspector(args.model, threads=1)  # the checks, limits and guard of the model the photos will train

    def not_a_part(data: bytes) -> str | None:
        (result,) = model.inspect([("photo", data)])
        return result.flag or result.error or None

    report = import_folder(Path(args.folder), mapping, Path(args.line), model.spec, inspector, not_a_part)
    for path, reason in report.skipped:
        print(printable(f"skipped {path}: {reason}"), file=sys.stderr)
    for number, reason in read_rows(Path(args.line))[1]:
        print(
            printable(f"warning: {Path(args.line) / LABELS_NAME} line {number}: {reason}; left out of training"), file=sys.stderr
        )
    counts = ", ".join(f"{n} {verdict}" for verdict, n in report.recorded.items() if n)
    print(
        f"import-line: {sum(report.recorded.values())} verdicts by {inspector} recorded in {args.line} ({counts or 'none'}); "
        f"{len(report.duplicates)} already counted; {len(report.skipped)} skipped",
        file=sys.stderr,
    )
    return SKIPPED_EXIT if report.skipped else 0


def review(args: argparse.Namespace) -> int:
    """The review station; like serve, no token means loopback only."""
    import uvicorn

    from casting_inspection.serving import service
    from casting_inspection.serving.inference import Inspector
    from casting_inspection.serving.review import station

    inspector = _login_name(args.inspector)
    token = service.resolve_token(args.token_file)
    if token is None and not service.is_loopback(args.host):
        raise InspectionError(
            f"refusing to serve {args.host} without a token: set {service.TOKEN_ENV} or pass --token-file "
            "(without one, only 127.0.0.1, ::1 or localhost)"
        )
    spec = Inspector(args.model, threads=1).spec
    app = station.create_review_app(station.Station(Path(args.watch_out), Path(args.line), spec, inspector), token, args.host)
    listening = _listen(args.host, args.port)
    host, port = listening.getsockname()[:2]
    print(f"review: {inspector} labels {args.watch_out} into {args.line} on http://{_url_host(host)}:{port}/", file=sys.stderr)
    if token:
        print("review: the page asks for the token; every call sends it as 'Authorization: Bearer <token>'", file=sys.stderr)
    config = uvicorn.Config(app, log_level="warning", workers=1, http=service.header_deadline_protocol(10.0))
    uvicorn.Server(config).run(sockets=[listening])
    return 0


def _add_line_commands(commands, common) -> None:
    """review and import-line: people's verdicts flowing into the line data set (data/line.py)."""
    DEFAULT_LINE = "data/line"  # data.line.DEFAULT_LINE; importing it here would load pandas for every command

    sub = commands.add_parser(
        "review",
        help="a web page to label the photos the watcher left for a person",
        description="Serve the review station: the photos `watch` decided review or not_a_part, most uncertain first; "
        "keys d defective, o ok, n not a part, s skip, u undo. Each verdict copies the photo into the line data set.",
    )
    sub.add_argument("--watch-out", required=True, help="the --out folder of casting-inspect watch (read only)")
    sub.add_argument("--line", default=str(DEFAULT_LINE), help=f"the line data set (default: {DEFAULT_LINE})")
    sub.add_argument("--inspector", help="who labels (default: your login name)")
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sub.add_argument("--port", type=_port, default=8100, help="port (default: 8100; 0: any free port)")
    sub.add_argument(
        "--token-file", type=Path, help="bearer token file (else $CASTING_INSPECT_TOKEN); required for a non-loopback --host"
    )
    common(sub)
    sub.set_defaults(run=review)

    sub = commands.add_parser(
        "import-line",
        help="add a folder of photos the plant already labelled to the line data set",
        description="Add FOLDER/<class>/... photos with one verdict each; every class sub-folder must be mapped. "
        "Exit status: 0 all added; 3 some files were skipped (named on stderr); 1 an error.",
    )
    sub.add_argument("folder", help="the labelled folder, one sub-folder per class")
    sub.add_argument(
        "--map",
        action=_Maps,
        default=[],
        metavar="SUBFOLDER=VERDICT",
        help=f"e.g. --map NG=defective --map OK=ok (at most {MAX_MAPS})",
    )
    sub.add_argument("--line", default=str(DEFAULT_LINE), help=f"the line data set (default: {DEFAULT_LINE})")
    sub.add_argument("--inspector", help="who labelled them (default: your login name)")
    common(sub)
    sub.set_defaults(run=import_line)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casting-inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub):
        sub.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"exported ONNX model (default: {DEFAULT_MODEL})")
        sub.add_argument("--threads", type=_thread_count, default=0, help="CPU threads for ONNX Runtime; 0 = all cores (default)")

    sub = commands.add_parser("predict", help="decide image files, folders or glob patterns")
    sub.add_argument("paths", nargs="+", help="image files, folders (searched for image files) or glob patterns")
    sub.add_argument("--format", choices=["csv", "jsonl"], default="csv", help="output rows (default: csv)")
    sub.add_argument("--out", type=Path, help="write the rows here instead of stdout")
    sub.add_argument("--batch-size", type=_positive_int, default=64, help="images per model call (default: 64)")
    sub.add_argument("--maps", type=Path, help="write each photo's anomaly map over it here (PHOTO.anomaly.png)")
    sub.add_argument(
        "--drift-min-images",
        type=_positive_int,
        default=20,
        help="check input drift when at least this many images were decided (default: 20)",
    )
    common(sub)
    sub.set_defaults(run=predict)

    sub = commands.add_parser("serve", help="the HTTP inspection service (FastAPI on uvicorn)")
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sub.add_argument("--port", type=_port, default=8000, help="port (default: 8000; 0: any free port)")
    sub.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted file, in MB (default: 10)")
    sub.add_argument("--max-files", type=int, default=64, help="most images in one request (default: 64)")
    _serve_arguments(sub)
    common(sub)
    sub.set_defaults(run=serve)

    _add_watch(commands, common)
    _add_line_commands(commands, common)
    add_station(commands, common)

    sub = commands.add_parser("about", help="which model, how it decides, where it came from")
    common(sub)
    sub.set_defaults(run=about)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except InspectionError as exc:
        print(printable(f"casting-inspect {args.command}: error: {exc}"), file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # the reader stopped early (| head): nothing left to say, and no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
