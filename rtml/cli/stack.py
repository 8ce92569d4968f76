"""``rtml`` verbs of :mod:`rtml.platform.stack`: argument parsing and printing only; the work is done there."""

from __future__ import annotations

from typing import Any

from rtml.platform.distributed import stack_for
from rtml.platform.stack import StackError
from rtml.settings import get_settings


def _parse_only(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _format_status(st: dict[str, Any]) -> str:
    profile = "" if st.get("profile", "embedded") == "embedded" else f", {st['profile']} profile"
    lines = [f"rtml stack{profile} (state in {st['home']}, logs in {st['logs']})"]
    for name, info in st["services"].items():
        # An optional service nobody started (Kafka unless it is the source) is off, not down.
        mark = "healthy" if info["healthy"] else ("off" if info.get("detail") == "not started" else "DOWN")
        pid = info["pid"]
        if isinstance(pid, dict):
            pid = ", ".join(f"{k.removeprefix('airflow-').removeprefix('rtml-')}={v}" for k, v in pid.items())
        lines.append(f"  {name:<8} {mark:<8} {info['url']}  pid {pid}")
        if info.get("restarts"):
            lines.append(f"           restarted {info['restarts']}x, last: {info['last_exit']}")
        if info.get("detail"):
            lines.append(f"           {info['detail']}")
        if name == "mlflow":
            lines.append(f"           UI: {info['ui']}")
        if name == "airflow":
            pw = info.get("password") or "(generated at first start)"
            lines.append(f"           login: {info['username']} / {pw}")
        if info.get("users"):
            lines.append("           users (password files): " + ", ".join(f"{u} ({p})" for u, p in info["users"].items()))
    return "\n".join(lines)


def _stack(args: Any) -> Any:
    from rtml.cli import CLIError

    try:
        return stack_for(args.profile, get_settings())
    except StackError as err:
        raise CLIError(str(err), code=2) from None


def _cmd_up(args: Any) -> dict[str, Any]:
    from rtml.cli import CLIError

    try:
        stack = stack_for(args.profile, get_settings())
        result = stack.up(_parse_only(args.only), timeout=args.timeout)
    except StackError as err:
        raise CLIError(str(err), code=1) from None
    st = stack.status()
    result.update(status=st, message=_format_status(st))
    return result


def _cmd_down(args: Any) -> dict[str, Any]:
    stack = _stack(args)
    result = stack.down(_parse_only(args.only))
    stopped = result["stopped"]
    result["message"] = (
        "\n".join(f"{k}: {v}" for k, v in stopped.items()) if stopped else "nothing to stop (no pid files)"
    )
    return result


def _cmd_status(args: Any) -> dict[str, Any]:
    st = _stack(args).status()
    st["message"] = _format_status(st)
    return st


def add_commands(sub: Any) -> None:
    from rtml.cli import command

    p = sub.add_parser(
        "stack", help="start, stop and inspect the local stack", description=__doc__.split("\n")[0]
    )
    stack_sub = p.add_subparsers(dest="stack_command", required=True, metavar="{up,down,status}")
    up = command(
        stack_sub, "up", _cmd_up, "start SeaweedFS, MLflow and Airflow in the background; wait until healthy"
    )
    up.add_argument(
        "--only", help="comma-separated services to start (s3, mlflow, airflow, serve, kafka) with what they need"
    )
    up.add_argument("--timeout", type=float, default=300, help="seconds to wait for health (default 300)")
    down = command(stack_sub, "down", _cmd_down, "stop the processes this stack started")
    down.add_argument(
        "--only", help="comma-separated services to stop (s3, mlflow, airflow, serve, kafka; redis if distributed)"
    )
    status = command(
        stack_sub, "status", _cmd_status, "print each service, its URL, pid, health and the Airflow login"
    )
    for parser in (up, down, status):
        parser.add_argument(
            "--profile", choices=("embedded", "distributed"), default=None,
            help="embedded (default: one process per service, LocalExecutor, no auth) or distributed "
            "(CeleryExecutor with 2 workers, Redis with a password, PostgreSQL, MLflow basic auth with a "
            "user per service, 2 serving replicas); default: the profile the state folder was started with",
        )
