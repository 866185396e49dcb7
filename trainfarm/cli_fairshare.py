"""`trainfarm fairshare`: each queue's capacity and each user's share, as admission last decided."""

from __future__ import annotations

from typing import Any

import click
import typer
from rich.table import Table

from trainfarm import render
from trainfarm.client import ApiClient


def fairshare(ctx: typer.Context) -> None:
    """Show who holds what on each queue, their caps, their recent usage and their place in line.

    Per queue: its job slots and GPUs (from the workers online), how many are in use and how many
    jobs wait. Per user: devices running / cap, jobs queued / cap, usage in device-hours (decayed
    with TRAINFARM_FAIRSHARE_HALF_LIFE: the less a user ran lately, the sooner they start), and how
    many jobs are ahead of their next one.

    Example:
      trainfarm fairshare
    """
    api: ApiClient = ctx.obj
    share = api.fairshare()
    if not share["queues"]:
        click.echo("admission has not decided yet: no fair share to show", err=True)
        return
    out = render.console()
    for i, queue in enumerate(share["queues"]):
        if i:
            out.print()
        out.print(capacity_line(queue), markup=False, highlight=False)
        users = [u for u in share["users"] if u["queue"] == queue["queue"]]
        if users:
            out.print(users_table(users))
    decided = render.format_time(share["decided_at"])
    note = "preemption on" if share["preemption"] else "preemption off"
    click.echo(
        f"(decided {decided}; half-life {render.format_duration(share['half_life_seconds'])}; {note})",
        err=True,
    )


def capacity_line(queue: dict[str, Any]) -> str:
    """`gpu: 2 slots (1 in use), 4 GPUs (2 in use), 3 waiting, 1 worker`."""
    workers = queue["workers"]
    parts = [f"{queue['slots']} slots ({queue['used_slots']} in use)"]
    if queue["gpus"]:
        parts.append(f"{queue['gpus']} GPUs ({queue['used_devices']} in use)")
    parts.append(f"{queue['waiting']} waiting")
    parts.append(f"{workers} worker" + ("" if workers == 1 else "s"))
    return f"{queue['queue']}: " + ", ".join(parts)


def of_cap(value: int, cap: int) -> str:
    """`2/4`, or `2/no cap` where the cap is 0."""
    return f"{value}/{cap if cap else 'no cap'}"


def users_table(users: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("USER", "RUNNING", "QUEUED", "USAGE", "POSITION"):
        table.add_column(column, no_wrap=True, justify="left" if column == "USER" else "right")
    for user in users:
        position = user["position"]
        render.add_row(
            table,
            user["user"] or "-",  # jobs from before users had no owner
            of_cap(user["running_devices"], user["max_devices"]),
            of_cap(user["queued"], user["max_queued"]),
            f"{user['usage']:.2f} dev-h",
            "-" if position is None else str(position),
        )
    return table
