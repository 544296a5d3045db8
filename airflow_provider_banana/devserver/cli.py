"""Parse the devserver's command line and run it under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import uvicorn
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from airflow_provider_banana.devserver.app import DropFilter, create_app
from airflow_provider_banana.devserver.config import (
    ADMIN_TOKEN_ENV_VAR,
    API_KEY_ENV_VAR,
    DEFAULT_BACKLOG,
    DEFAULT_CHECK_HOLD,
    DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_MAX_HELD_BYTES,
    DEFAULT_MODEL_CONCURRENCY,
    DEFAULT_MODEL_TIMEOUT,
    DEFAULT_REPLICAS,
    DEFAULT_RESULT_TTL,
    DEFAULT_START_HOLD,
    AdminMode,
    DevServerConfig,
    admin_mode,
)
from airflow_provider_banana.devserver.models import BUILTIN_MODEL_KEYS
from airflow_provider_banana.devserver.service import BananaService

log = logging.getLogger("airflow_provider_banana.devserver")

# On SIGTERM held requests are answered at once; this bounds anything else
# (a delay_next fault, a slow external model) so a stop never hangs.
_GRACEFUL_SHUTDOWN = 5
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_banana.devserver",
        description="Run a local Banana-compatible (v4) inference server for development and tests.",
        epilog=f"Built-in models: {', '.join(BUILTIN_MODEL_KEYS)}. "
        f"With --require-api-key the key is read from ${API_KEY_ENV_VAR}. "
        f"The admin API (/_admin/) is open on a loopback address and off on any other, "
        f"unless ${ADMIN_TOKEN_ENV_VAR} is set: then every admin request needs "
        f"'Authorization: Bearer <token>'.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help=f"address to bind; on a non-loopback one the admin API is off unless ${ADMIN_TOKEN_ENV_VAR} "
        "is set (default: %(default)s)",
    )
    parser.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--start-hold",
        type=float,
        default=DEFAULT_START_HOLD,
        metavar="SECONDS",
        help="how long a Start without startOnly waits for the result (default: %(default)s)",
    )
    parser.add_argument(
        "--check-hold",
        type=float,
        default=DEFAULT_CHECK_HOLD,
        metavar="SECONDS",
        help="how long a longPoll Check is held (default: %(default)s)",
    )
    parser.add_argument(
        "--result-ttl",
        type=float,
        default=DEFAULT_RESULT_TTL,
        metavar="SECONDS",
        help="how long finished and failed results are kept; sooner, oldest first and with a warning in "
        "the log, when --max-held-bytes needs the room (default: %(default)s)",
    )
    parser.add_argument(
        "--max-held-bytes",
        type=parse_size_arg,
        default=DEFAULT_MAX_HELD_BYTES,
        metavar="BYTES",
        help="the most bytes of inputs (of calls not finished) and outputs (of results kept) the server "
        "holds, e.g. 268435456 or 256MiB; past it the oldest results are dropped early, and when the "
        "inputs of running calls alone fill it, a new Start is answered with a v4 error (HTTP 200, "
        "'error' in message); 0 for no cap (default: %(default)s, 256 MiB)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=DEFAULT_REPLICAS,
        metavar="N",
        help="calls of one model that run at once (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="KEY=URL",
        type=parse_model_arg,
        help="serve modelKey KEY by POSTing the inputs to URL exactly as given, e.g. "
        "http://127.0.0.1:8000/sleep for a Potassium @app.handler('/sleep') (repeatable)",
    )
    parser.add_argument(
        "--model-timeout",
        type=float,
        default=DEFAULT_MODEL_TIMEOUT,
        metavar="SECONDS",
        help="time allowed for one request to an external model server, counted from when it is sent, "
        "not while the call waits its turn (default: %(default)s)",
    )
    parser.add_argument(
        "--model-concurrency",
        action="append",
        default=[],
        metavar="N|KEY=N",
        type=parse_concurrency_arg,
        help=f"requests each external model server gets at once; more calls wait, queued, in the "
        f"devserver. Models whose URLs share scheme://host:port are one server and share the limit. "
        f"N sets it for every server, KEY=N for the server of model KEY; 0 means no limit beyond "
        f"--replicas (repeatable; default: {DEFAULT_MODEL_CONCURRENCY}, as Potassium serves one request "
        f"at a time)",
    )
    parser.add_argument(
        "--quirk-empty-message",
        action="store_true",
        help='answer finished Starts with "message": "" and "callID": "", as Banana did in 2023',
    )
    parser.add_argument(
        "--require-api-key",
        action="store_true",
        help=f"accept only the apiKey held in ${API_KEY_ENV_VAR}",
    )
    parser.add_argument("--log-level", default="info", choices=_LOG_LEVELS, help="(default: %(default)s)")
    parser.add_argument("--access-log", action="store_true", help="log every request (costs CPU under load)")
    parser.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG, help="listen backlog (default: %(default)s)")
    parser.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=DEFAULT_KEEP_ALIVE_TIMEOUT,
        metavar="SECONDS",
        help="close a connection idle this long, before its first request or between two; a held "
        "request is not idle (default: %(default)s)",
    )
    parser.add_argument(
        "--http",
        default="auto",
        choices=("auto", "httptools", "h11"),
        help="HTTP implementation; auto prefers httptools (default: %(default)s)",
    )
    parser.add_argument(
        "--loop",
        default="auto",
        choices=("auto", "uvloop", "asyncio"),
        help="event loop; auto prefers uvloop (default: %(default)s)",
    )
    return parser


def parse_model_arg(value: str) -> tuple[str, str]:
    """Split and check a ``KEY=URL`` argument.

    :param value: the argument.
    :return: the key and the URL.
    :raises argparse.ArgumentTypeError: when it is not ``KEY=http(s)://host...``.
    """
    key, sep, url = value.partition("=")
    key = key.strip()
    parts = urlsplit(url.strip())
    if not sep or not key or parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected KEY=http://host:port, got {value.split('=', 1)[0]!r}=…")
    return key, url.strip()


_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_size_arg(value: str) -> int:
    """Read a byte count: digits, optionally followed by a unit (``KiB``, ``MiB``, ``GiB``, ``KB``...).

    :param value: the argument.
    :return: the bytes.
    :raises argparse.ArgumentTypeError: when it is not a whole number of a known unit.
    """
    text = value.strip()
    digits = text.rstrip("bBkKmMgGiI ")
    unit = text[len(digits) :].strip().lower()
    if not digits.isdigit() or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"expected a number of bytes such as 268435456 or 256MiB, got {value!r}")
    return int(digits) * _SIZE_UNITS[unit]


def parse_concurrency_arg(value: str) -> tuple[str | None, int]:
    """Split and check an ``N`` or ``KEY=N`` argument of ``--model-concurrency``.

    :param value: the argument.
    :return: the key (None for every model server) and the limit.
    :raises argparse.ArgumentTypeError: when it is neither form or N is not an integer >= 0.
    """
    key, sep, number = value.rpartition("=")
    key = key.strip()
    number = number.strip()
    if (sep and not key) or not number.isdigit():
        raise argparse.ArgumentTypeError(f"expected N or KEY=N with an integer N >= 0, got {value!r}")
    return (key if sep else None), int(number)


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> DevServerConfig:
    """Build the launch configuration from parsed arguments and the environment.

    :param args: the parsed command line.
    :param environ: the process environment, read for the apiKey and the admin token.
    :return: the configuration.
    :raises ValueError: on an invalid combination or value.
    """
    api_key: str | None = None
    if args.require_api_key:
        api_key = environ.get(API_KEY_ENV_VAR) or None
        if api_key is None:
            raise ValueError(f"--require-api-key needs a non-empty ${API_KEY_ENV_VAR}")
    admin_token = environ.get(ADMIN_TOKEN_ENV_VAR)
    if admin_token is not None and not admin_token:
        # Refused rather than ignored: on loopback an ignored token would leave the admin API open.
        raise ValueError(f"${ADMIN_TOKEN_ENV_VAR} is set but empty; unset it or give it a token")
    model_concurrency = DEFAULT_MODEL_CONCURRENCY
    model_concurrency_by_key: dict[str, int] = {}
    for key, limit in args.model_concurrency:
        if key is None:
            model_concurrency = limit
        elif key not in dict(args.model):
            raise ValueError(f"--model-concurrency {key}={limit}: no --model {key}=URL was given")
        else:
            model_concurrency_by_key[key] = limit
    return DevServerConfig(
        host=args.host,
        port=args.port,
        start_hold=args.start_hold,
        check_hold=args.check_hold,
        result_ttl=args.result_ttl,
        max_held_bytes=args.max_held_bytes,
        replicas=args.replicas,
        external_models=dict(args.model),
        quirk_empty_message=args.quirk_empty_message,
        api_key=api_key,
        admin_token=admin_token,
        model_timeout=args.model_timeout,
        model_concurrency=model_concurrency,
        model_concurrency_by_key=model_concurrency_by_key,
        log_level=args.log_level,
        access_log=args.access_log,
        backlog=args.backlog,
        http=args.http,
        loop=args.loop,
        keep_alive_timeout=args.keep_alive_timeout,
    )


def configure_logging(level_name: str) -> None:
    """Send every log line to stderr at the given level, uvicorn's chatter capped at INFO.

    :param level_name: a level name such as ``info``.
    """
    level = logging.getLevelName(level_name.upper())
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # uvicorn's debug output is per connection; our own debug lines are what a user asked for.
    logging.getLogger("uvicorn").setLevel(max(level, logging.INFO))
    logging.getLogger("uvicorn.error").addFilter(DropFilter())


def raise_fd_limit() -> None:
    """Raise the soft open-file limit to the hard one: every held request is a file descriptor."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            log.warning("Could not raise the open-file limit from %d to %d", soft, hard)
            return
    log.debug("Open-file limit: %d", hard)


def bind_socket(host: str, port: int, backlog: int) -> socket.socket:
    """Bind and listen here rather than in uvicorn, so that port 0 reveals the real port.

    :param host: address to bind.
    :param port: port to bind; 0 picks a free one.
    :param backlog: listen backlog.
    :return: the listening socket.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Lets a restarted server take its port back while old connections sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class DevUvicornServer(uvicorn.Server):
    """A uvicorn server that announces its real address and answers held requests on shutdown.

    :param config: uvicorn's configuration.
    :param service: the Banana service, whose held requests are released on shutdown.
    :param url: the address to announce once serving.
    """

    def __init__(self, config: uvicorn.Config, service: BananaService, url: str) -> None:
        super().__init__(config)
        self._service = service
        self._url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving, then print the listening line that launchers wait for.

        :param sockets: the pre-bound sockets.
        """
        await super().startup(sockets=sockets)
        if not self.should_exit:
            print(f"Banana devserver listening on {self._url}", flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Answer held requests with their current state, then shut down as uvicorn does.

        Without this a held long poll would keep the process alive for up to the check hold.

        :param sockets: the pre-bound sockets.
        """
        self._service.release_holds()
        await super().shutdown(sockets=sockets)


def log_admin_mode(mode: AdminMode, address: str) -> None:
    """Say once at startup how the admin API is exposed, with a warning when it is off.

    :param mode: ``open``, ``token`` or ``off``, from :func:`~airflow_provider_banana.devserver.config.admin_mode`.
    :param address: the bound address, for the message.
    """
    if mode == "off":
        log.warning(
            "Admin API (/_admin/) disabled: %s is not a loopback address. To enable it, set $%s "
            "to a secret token and send 'Authorization: Bearer <token>' with every admin request",
            address,
            ADMIN_TOKEN_ENV_VAR,
        )
    elif mode == "token":
        log.info("Admin API (/_admin/) requires the bearer token from $%s", ADMIN_TOKEN_ENV_VAR)
    else:
        log.info("Admin API (/_admin/) open without a token on loopback address %s", address)


def log_serving(config: DevServerConfig) -> None:
    """Say once at startup which models are served and whether a client must send one API key.

    :param config: the launch configuration.
    """
    builtin = [key for key in BUILTIN_MODEL_KEYS if key not in config.external_models]
    # A model URL is shown without any user:password@ it may carry.
    external = [f"{key} -> {_without_credentials(url)}" for key, url in config.external_models.items()]
    log.info("Models served: %s", "; ".join(filter(None, [", ".join(builtin) + " (built in)", *external])))
    if config.api_key is not None:
        log.info("API key required: only the one in $%s is accepted (--require-api-key)", API_KEY_ENV_VAR)
    else:
        log.info(
            "API key not checked: any apiKey is accepted (--require-api-key accepts only $%s)",
            API_KEY_ENV_VAR,
        )


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def idle_closing_protocol(http: str, seconds: float) -> type[asyncio.Protocol]:
    """Return uvicorn's HTTP protocol ``http``, closing a connection that sends nothing for ``seconds``.

    uvicorn starts its keep-alive timer only when a response is complete, so a connection that
    never sends a request would stay open for ever (thousands of them, from a client that opens a
    pool it never uses, or from anyone). The timer stops at the first byte; from then on uvicorn's
    own keep-alive timer governs the gaps between requests.

    :param http: ``auto``, ``httptools`` or ``h11``.
    :param seconds: how long a connection may stay silent before its first request.
    """
    base: type[asyncio.Protocol] = import_from_string(HTTP_PROTOCOLS[http])

    class IdleClosingProtocol(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._first_request_timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
                seconds, transport.close
            )

        def data_received(self, data: bytes) -> None:
            self._stop_first_request_timer()
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_first_request_timer()
            super().connection_lost(exc)

        def _stop_first_request_timer(self) -> None:
            timer, self._first_request_timer = getattr(self, "_first_request_timer", None), None
            if timer is not None:
                timer.cancel()

    return IdleClosingProtocol


def serve(config: DevServerConfig, sock: socket.socket) -> None:
    """Run the server until SIGINT or SIGTERM.

    The admin API's exposure is decided from the address actually bound, so a host name
    that resolves to a network address counts as non-loopback.

    :param config: the launch configuration.
    :param sock: the listening socket, from :func:`bind_socket`.
    """
    address, port = sock.getsockname()[:2]
    host = f"[{config.host}]" if ":" in config.host else config.host
    mode = admin_mode(address, config.admin_token)
    log_admin_mode(mode, address)
    log_serving(config)
    service = BananaService(config)
    uv_config = uvicorn.Config(
        create_app(service, admin=mode, admin_token=config.admin_token if mode == "token" else None),
        http=idle_closing_protocol(config.http, config.keep_alive_timeout),
        loop=config.loop,
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=config.access_log,
        backlog=config.backlog,
        # Thousands of held long polls are the point; uvicorn must not answer 503 past a cap.
        limit_concurrency=None,
        # Between requests; before the first one, idle_closing_protocol's own timer.
        timeout_keep_alive=config.keep_alive_timeout,  # type: ignore[arg-type]  # a float works: call_later
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN,
        server_header=False,
        # Nothing sits in front of a devserver; parsing X-Forwarded-* would only cost CPU.
        proxy_headers=False,
    )
    DevUvicornServer(uv_config, service, f"http://{host}:{port}").run(sockets=[sock])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the devserver from the command line.

    :param argv: arguments without the program name; defaults to ``sys.argv[1:]``.
    :return: the process exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, os.environ)
    except ValueError as e:
        parser.error(str(e))
    configure_logging(config.log_level)
    raise_fd_limit()
    try:
        sock = bind_socket(config.host, config.port, config.backlog)
    except OSError as e:
        log.error("Cannot listen on %s port %d: %s", config.host, config.port, e)
        return 1
    try:
        serve(config, sock)
    except KeyboardInterrupt:
        return 130
    return 0
