"""The ``overcommit`` command: run, sweep, validate, report, serve.

Errors are one clear line (exit status 2 for a bad spec, 1 otherwise) unless
``--debug`` is given, which shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from .live_metrics import DEFAULT_LINGER_S, LiveMetrics
from .spec import SpecError, load_spec


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a spec field, e.g. --set guest_groups.0.reporting.order=10",
    )
    p.add_argument("--out", default=None, type=_dir_arg, help="results root (default: runs/)")
    p.add_argument(
        "--shards",
        type=_positive_int,
        default=None,
        help="guest shard actors (default: available CPUs)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS or an embedded local cluster)",
    )
    p.add_argument(
        "--transport",
        choices=("grpc", "inprocess"),
        default="grpc",
        help="guest-host path: real gRPC between Ray actors, or in-process without Ray",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_metrics(p: argparse.ArgumentParser, serve: bool = False) -> None:
    if not serve:
        p.add_argument(
            "--metrics",
            action="store_true",
            help="serve Prometheus /metrics on loopback from every actor and the coordinator, "
            "and write a file_sd targets file (docs/metrics.md)",
        )
        p.add_argument(
            "--metrics-linger",
            type=float,
            default=DEFAULT_LINGER_S,
            metavar="SECONDS",
            help=f"keep the endpoints up this long after the run (default {DEFAULT_LINGER_S:g})",
        )
    p.add_argument(
        "--metrics-targets",
        default=None,
        metavar="PATH",
        help="the file_sd targets file (default: OUT/targets/<name>-<pid>.json"
        + (", OUT/targets/serve.json for serve)" if serve else ")"),
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9400 if serve else 0,
        help="the coordinator's /metrics port on loopback (0: any free port; default %(default)s)",
    )
    p.add_argument(
        "--metrics-top-guests",
        type=int,
        default=0,
        metavar="K",
        help="also export each host's K guests with the most backed memory (label guest; default 0)",
    )


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _dir_arg(text: str) -> str:
    """An argparse type: a directory path, not empty (an empty one meant the current one)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty (use . for this directory)")
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="overcommit", description=__doc__.splitlines()[0])
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="run one experiment (and its paired baselines)")
    p.add_argument("spec", nargs="?", help="the spec file (not needed with --resume)")
    _add_common(p)
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a stopped run from its last checkpoint (RUN_DIR/checkpoint; the spec "
        "is the checkpoint's, and a SPEC given too must be the same)",
    )
    p.add_argument("--report", action="store_true", help="also write report.html and plots")
    _add_metrics(p)
    p.add_argument(
        "--speed",
        type=float,
        default=None,
        metavar="X",
        help="pace the run to X simulated seconds per wall second (default: as fast as it goes)",
    )

    p = sub.add_parser("sweep", help="run a spec's sweep grid x seeds into one results.parquet")
    p.add_argument("spec")
    _add_common(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a sweep stopped part way: finished runs are read back from their "
        "directories, stopped ones resume from their checkpoints",
    )

    p = sub.add_parser(
        "validate",
        help="check a spec; print every error with its field path (--explain: the fields)",
    )
    p.add_argument(
        "spec",
        nargs="*",
        help="the spec file(s) (not needed with --explain); with several, each is checked "
        "and the exit status is 2 if any is refused",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    p.add_argument(
        "--explain",
        nargs="?",
        const="",
        default=None,
        metavar="FIELD",
        help="print every spec field (or those under FIELD, e.g. guest_groups.0.workload) "
        "with its type, bounds, default and meaning",
    )

    p = sub.add_parser("report", help="write report.html and PNG plots for a run directory")
    p.add_argument("run_dir")

    p = sub.add_parser("serve", help="serve ExperimentService for gRPC clients")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument(
        "--trace-dir",
        default=None,
        help="directory clients' trace workloads read from (relative paths only; "
        "without it, specs naming trace files are refused)",
    )
    p.add_argument(
        "--bind",
        default="127.0.0.1",
        help="address to bind (anything but loopback needs --allow-remote, --token and TLS)",
    )
    p.add_argument("--allow-remote", action="store_true", help="allow binding beyond loopback")
    p.add_argument(
        "--token",
        default=None,
        help="bearer token clients must present (visible to local users in the process "
        "list: prefer --token-file or OVERCOMMIT_TOKEN)",
    )
    p.add_argument(
        "--token-file",
        default=None,
        help="file holding the bearer token (one line); OVERCOMMIT_TOKEN in the "
        "environment is used when neither option is given",
    )
    p.add_argument("--tls-cert", default=None, help="server certificate chain (PEM)")
    p.add_argument("--tls-key", default=None, help="server private key (PEM)")
    p.add_argument("--tls-client-ca", default=None, help="CA for client certificates (mutual TLS)")
    p.add_argument("--out", default="runs", type=_dir_arg)
    p.add_argument("--transport", choices=("grpc", "inprocess"), default="grpc")
    p.add_argument(
        "--memory-budget",
        type=_memory_budget_arg,
        default=None,
        metavar="SIZE",
        help="memory the simulations of experiments that have not ended may need in all, "
        "estimated from their specs; a create over it is refused (default: half of this "
        "machine's memory; e.g. 16GiB)",
    )
    _add_metrics(p, serve=True)

    p = sub.add_parser(
        "export-openmetrics",
        help="write a finished run's time series as OpenMetrics with timestamps "
        "(for promtool tsdb create-blocks-from openmetrics)",
    )
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="output file (default: RUN_DIR/metrics.om)")
    p.add_argument(
        "--start",
        type=float,
        default=None,
        metavar="UNIX_SECONDS",
        help="wall time of simulated time 0 (default: the run's start, from metadata.json)",
    )
    return ap


def cmd_validate(args) -> int:
    if args.explain is not None:
        from .spec_explain import explain

        try:
            print("\n".join(explain(args.explain)))
        except ValueError as e:
            raise SpecError([("--explain", str(e).removeprefix("--explain: "))]) from None
        return 0
    if not args.spec:
        raise SpecError([("spec", "give a spec file (or --explain to list the fields)")])
    if len(args.spec) == 1:
        _validate_one(args.spec[0], args.overrides)
        return 0
    refused = 0
    for path in args.spec:  # each file's errors under its name; one process for all
        try:
            _validate_one(path, args.overrides)
        except SpecError as e:
            refused += 1
            print(f"{path}: refused", file=sys.stderr)
            _print_spec_errors(e)
    return 2 if refused else 0


def _validate_one(path: str, overrides: list[str]) -> None:
    spec = load_spec(path, overrides)
    from .plan import make_plan

    plan = make_plan(spec, "validate", 1)
    hosts, guests = plan.hosts, plan.guests
    points = ""
    if spec.sweep is not None:  # every grid point as the sweep would make it
        from .sweep import point_specs

        points = f", {_count(len(point_specs(spec)), 'sweep run')}"
    print(
        f"{path}: ok ({_count(len(hosts), 'host')}, {_count(len(guests), 'guest')}, "
        f"run_id {spec.run_id()}{points})"
    )
    _print_warnings(spec, plan)


def _print_spec_errors(e: SpecError) -> None:
    for path, msg in e.errors:
        print(f"error: {path}: {msg}", file=sys.stderr)


def _print_warnings(spec, plan=None) -> None:
    from .spec_checks import spec_warnings

    for field, message in spec_warnings(spec, plan):
        print(f"warning: {field}: {message}", file=sys.stderr)


def _memory_budget_arg(value: str) -> int:
    from .quantities import parse_size_bytes

    try:
        size = parse_size_bytes(value, "memory_budget")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"memory_budget={value!r}: must be > 0")
    return size


def _print_plan_warnings(spec, warnings) -> None:
    """The run's warnings that needed its plan (trace files read, their notes), which the
    ones printed before the run could not include."""
    from .spec_checks import spec_warnings

    before = {f"{field}: {message}" for field, message in spec_warnings(spec)}
    for line in warnings:
        if line not in before:
            print(f"warning: {line}", file=sys.stderr)


def cmd_run(args) -> int:
    from .console import print_summary
    from .runner import LiveRun, RunInterrupted, run_experiment

    resume = None
    out_given, args.out = args.out, args.out or "runs"
    if args.resume is not None:
        from . import checkpoint

        if args.overrides:
            raise SystemExit("error: --set: a resumed run keeps its spec; it takes no overrides")
        given = load_spec(args.spec) if args.spec else None
        resume = checkpoint.load(args.resume, given)
        spec = resume.spec
        if args.shards is not None and args.shards != resume.shards:
            print(
                f"warning: --shards {args.shards}: the checkpoint has {resume.shards} shards; "
                "resuming with those",
                file=sys.stderr,
            )
        if out_given is not None:
            print(
                f"warning: --out {out_given}: a resumed run writes to its own directory, "
                f"{args.resume}",
                file=sys.stderr,
            )
        print(f"resuming {args.resume}: {checkpoint.describe(resume)}", flush=True)
    elif args.spec is None:
        raise SystemExit("error: run needs a SPEC file, or --resume RUN_DIR")
    else:
        spec = load_spec(args.spec, args.overrides)
        _print_warnings(spec)
    live = None
    if args.metrics or args.speed is not None:
        metrics = None
        if args.metrics and args.metrics_targets is not None:  # refused before anything runs
            from .live_metrics import check_targets_path

            try:
                check_targets_path(Path(args.metrics_targets))
            except OSError as e:
                raise OSError(f"metrics targets {args.metrics_targets}: {e}") from None
        if args.metrics:
            metrics = LiveMetrics(
                targets_path=args.metrics_targets
                or os.path.join(args.out, "targets", f"{spec.name}-{os.getpid()}.json"),
                make_folder=args.metrics_targets is None,
                port=args.metrics_port,
                linger_s=args.metrics_linger,
                top_guests=args.metrics_top_guests,
            )
        live = LiveRun(metrics=metrics, speed=args.speed, on_metrics=_print_metrics)
    try:
        with _stop_on_signals() as stop:
            result = run_experiment(
                spec,
                out_dir=args.out,
                shards=args.shards,
                address=args.address,
                transport=args.transport,
                progress=not args.no_progress,
                live=live,
                resume=resume,
                stop=stop,
            )
    except RunInterrupted as e:
        print(f"\n{e}", file=sys.stderr)
        return 130
    print_summary(result)
    _print_plan_warnings(spec, result.metadata.get("warnings", ()))
    print(f"results: {result.run_dir}")
    if args.report:
        from .report import write_report

        print(f"report:  {write_report(result.run_dir)}")
    return 0


@contextlib.contextmanager
def _stop_on_signals():
    """SIGINT and SIGTERM ask the run to stop at its next sample boundary (it then
    checkpoints and says how to resume); a second one aborts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            f"\n{signal.Signals(signum).name}: stopping at the next sample boundary and "
            "checkpointing (again to abort at once)",
            file=sys.stderr,
            flush=True,
        )

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _print_metrics(hub) -> None:
    print(f"metrics: http://{hub.address}/metrics; file_sd targets: {hub.targets_path}", flush=True)


def cmd_export_openmetrics(args) -> int:
    from .openmetrics import export_openmetrics

    out = export_openmetrics(args.run_dir, args.out, args.start)
    print(out)
    return 0


def cmd_sweep(args) -> int:
    from .report import plot_sweep
    from .runner import RunInterrupted
    from .sweep import run_sweep

    spec = load_spec(args.spec, args.overrides)
    try:
        with _stop_on_signals() as stop:
            df = run_sweep(
                spec,
                out_dir=args.out or "runs",
                shards=args.shards,
                address=args.address,
                transport=args.transport,
                progress=not args.no_progress,
                resume=args.resume,
                stop=stop,
            )
    except RunInterrupted as e:
        print(
            f"\nsweep stopped; the run at simulated {e.now_ns / 1e9:g} s checkpointed in "
            f"{e.run_dir}; continue the sweep with: "
            + shlex.join(
                ["overcommit", "sweep", args.spec]
                + [a for o in args.overrides for a in ("--set", o)]
                + (["--out", args.out] if args.out else [])
                + ["--resume"]
            ),
            file=sys.stderr,
        )
        return 130
    if df.attrs.get("reused"):
        print(f"{df.attrs['reused']} finished run(s) read back, not run again")
    path = df.attrs["results_path"]
    plot_sweep(df, os.path.dirname(path))
    from .console import print_table
    from .sweep import sweep_table

    header, rows = sweep_table(df, df.attrs["grid"])
    print_table(f"{spec.name}: mean ± 95 % CI over seeds", header, rows)
    print(f"sweep results: {path}")
    print(f"report:        overcommit report {os.path.dirname(path)}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report, write_sweep_report

    if os.path.exists(os.path.join(args.run_dir, "results.parquet")):  # a sweep's directory
        print(write_sweep_report(args.run_dir))
        return 0
    if not os.path.exists(os.path.join(args.run_dir, "summary.json")):
        raise FileNotFoundError(
            f"run_dir: no summary.json (a run) or results.parquet (a sweep) in {args.run_dir}"
        )
    print(write_report(args.run_dir))
    return 0


MAX_TOKEN_FILE_BYTES = 4096


def _serve_token(args) -> str | None:
    """The admin token: --token, --token-file (its first line) or OVERCOMMIT_TOKEN, in that
    order; None for none. A token given but empty or blank is refused, never read as none."""
    if args.token is not None and args.token_file is not None:
        raise ValueError("serve: give --token or --token-file, not both")
    if args.token_file is not None:
        try:
            with open(args.token_file, "rb") as f:
                raw = f.read(MAX_TOKEN_FILE_BYTES + 1)
        except OSError as e:
            raise ValueError(f"--token-file {args.token_file}: cannot read: {e.strerror}") from None
        if len(raw) > MAX_TOKEN_FILE_BYTES:
            raise ValueError(f"--token-file {args.token_file}: over {MAX_TOKEN_FILE_BYTES} bytes")
        lines = raw.decode("utf-8", errors="replace").splitlines()
        token, where = (lines[0] if lines else ""), f"--token-file {args.token_file}"
    elif args.token is not None:
        token, where = args.token, "--token"
    elif "OVERCOMMIT_TOKEN" in os.environ:
        token, where = os.environ["OVERCOMMIT_TOKEN"], "OVERCOMMIT_TOKEN"
    else:
        return None
    if not token.strip() or token != token.strip():
        raise ValueError(
            f"{where}: the token must not be empty or blank, nor start or end with whitespace"
        )
    return token


def cmd_serve(args) -> int:
    from pathlib import Path

    from services.transport.security import ServerTls

    from .serve_process import ServeSettings, serve

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("serve: --tls-cert and --tls-key go together")
    token = _serve_token(args)
    tls = None
    if args.tls_cert and args.tls_key:
        client_ca = Path(args.tls_client_ca) if args.tls_client_ca else None
        tls = ServerTls.from_files(Path(args.tls_cert), Path(args.tls_key), client_ca)

    return serve(
        ServeSettings(
            port=args.port,
            bind=args.bind,
            allow_remote=args.allow_remote,
            token=token,
            tls=tls,
            out_dir=args.out,
            transport=args.transport,
            trace_dir=args.trace_dir,
            memory_budget=args.memory_budget,
            metrics=LiveMetrics(
                targets_path=args.metrics_targets
                or os.path.join(args.out, "targets", "serve.json"),
                make_folder=args.metrics_targets is None,
                port=args.metrics_port,
                linger_s=0.0,
                top_guests=args.metrics_top_guests,
            ),
        )
    )


COMMANDS = {
    "run": cmd_run,
    "sweep": cmd_sweep,
    "validate": cmd_validate,
    "report": cmd_report,
    "serve": cmd_serve,
    "export-openmetrics": cmd_export_openmetrics,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except SpecError as e:
        if args.debug:
            raise
        _print_spec_errors(e)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # one clear line, unless --debug
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
