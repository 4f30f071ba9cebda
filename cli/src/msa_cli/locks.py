"""`msa locks`: the user service's login throttle — which accounts and client addresses have failed logins counted,
which are locked and for how long — and clearing them (a person locked out by a guesser, or by their own typing).
The counts live in the user service's database, so any one instance answers for all of them."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from . import context
from .spec import Program

locks = typer.Typer(help="Login throttling: the accounts and client addresses locked out, and clearing them.",
                    invoke_without_command=True)


def _user_instance() -> Program:
    topo = context.build_topology()
    found = [p for p in topo.spec.programs if "user" in p.registers]
    if not found:
        raise context.fail("No user service in this topology.")
    return found[0]


def locks_table(records: list[dict[str, Any]]) -> Table:
    table = Table(title="failed logins (user service)", title_justify="left")
    for column in ("kind", "account or address", "failures", "locked"):  # folded, never cut: a person copies these
        table.add_column(column, justify="right" if column == "failures" else "left", overflow="fold")
    for r in records:
        locked = f"[red]yes, {r['retry_after_s']} s more[/]" if r["locked"] else "no"
        table.add_row(r["kind"], r["value"], str(r["failures"]), locked)
    return table


@locks.callback()
def show(ctx: typer.Context) -> None:
    """Every account and client address with failed logins counted, and whether it is locked now."""
    if ctx.invoked_subcommand is not None:
        return
    response = context.admin_request("GET", _user_instance(), "/admin/login-locks")
    assert response is not None
    records = response.json()
    if not records:
        context.console.print("No failed logins counted: nothing is locked.")
        return
    context.console.print(locks_table(records))


@locks.command()
def clear(account: Annotated[str | None, typer.Option(help="one account's username")] = None,
          client: Annotated[str | None, typer.Option(help="one client address, e.g. 127.0.0.1")] = None,
          all_: Annotated[bool, typer.Option("--all", help="every account and address")] = False) -> None:
    """Forget the failed logins of an account, of a client address, or (--all) of everyone: the lock is lifted."""
    chosen = [(kind, value) for kind, value in (("account", account), ("client", client)) if value is not None]
    if len(chosen) + all_ != 1:
        raise context.fail("Give one of --account NAME, --client ADDRESS or --all.")
    params = {"kind": chosen[0][0], "value": chosen[0][1]} if chosen else {}
    response = context.admin_request("DELETE", _user_instance(), "/admin/login-locks", params=params)
    assert response is not None
    cleared = response.json()["cleared"]
    what = f"{chosen[0][0]} {chosen[0][1]}" if chosen else "every account and address"
    context.console.print(f"Cleared {what}: {cleared} record(s) forgotten." if cleared
                          else f"Nothing was counted for {what}.")
