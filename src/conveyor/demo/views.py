"""The two views of ``conveyor demo``: plain progress lines (``--no-live``,
or no terminal, or no rich) and the live terminal view (rich.live.Live).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from conveyor.demo.app import QUEUE
from conveyor.demo.audit import RULE_NOTE, Audit, Record, audit_text
from conveyor.demo.orders import Order
from conveyor.demo.processes import CONCURRENCY
from conveyor.demo.state import ShopState, State

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.text import Text


class View:
    """Plain progress lines (``--no-live``)."""

    def __init__(self) -> None:
        self._last_line = 0.0
        self._shown_events = 0

    def __enter__(self) -> View:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def say(self, text: str) -> None:
        print(text, flush=True)

    def update(self, state: State, final: bool = False) -> None:
        for text, _ in state.events[self._shown_events :]:
            print(text, flush=True)
        self._shown_events = len(state.events)
        now = time.monotonic()
        if not final and now - self._last_line < 1.0:
            return
        self._last_line = now
        s = state.stats
        queue = (
            ""
            if s is None
            else f"ready {s.ready:3d}  leased {s.leased:2d}  done {s.acked_total:3d}"
        )
        shops = "  ".join(
            f"shop {shop.number}: " + _shop_status(shop) for shop in state.shops.values()
        )
        print(
            f"[{state.elapsed():5.1f}s] placed {len(state.placed):3d}/{len(state.orders)}  "
            f"{queue}  |  {shops}",
            flush=True,
        )

    def audit(self, result: Audit, state: State) -> None:
        print()
        print(audit_text(result))
        print()
        print(result.summary(state.killed))


def _shop_status(shop: ShopState) -> str:
    """What a shop is up to, in a few characters: its ovens, or its fate."""
    if shop.killed_at is not None:
        return "KILLED"
    if shop.exit_code is not None:
        return f"exited ({shop.exit_code})"
    return ",".join(sorted(k[0] for k in shop.baking)) or "idle"


class LiveView(View):
    """The live terminal view (rich.live.Live)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        from rich.live import Live

        self._live = Live(console=self.console, auto_refresh=False, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def say(self, text: str) -> None:
        self.console.print(text)

    def update(self, state: State, final: bool = False) -> None:
        if self._live is not None:
            self._live.update(self.render(state), refresh=True)

    def render(self, state: State) -> RenderableType:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        s = state.stats
        queue = Text.assemble(("queue ", "bold"), (f"{QUEUE}:  ", "bold"))
        for label, value in (
            ("placed", f"{len(state.placed)}/{len(state.orders)}"),
            ("ready", "-" if s is None else str(s.ready)),
            ("leased", "-" if s is None else str(s.leased)),
            ("done", "-" if s is None else str(s.acked_total)),
            ("dead", "-" if s is None else str(s.dead)),
        ):
            queue.append_text(Text.assemble((label, "dim"), " ", (value, "bold"), "   "))
        shops = Table(box=None, padding=(0, 1), header_style="bold", expand=True)
        shops.add_column("shop", justify="right")
        shops.add_column("pid", justify="right")
        shops.add_column("state")
        shops.add_column("heartbeat")
        shops.add_column("leases", justify="right")
        shops.add_column("baked", justify="right")
        shops.add_column("in the oven now", ratio=1, no_wrap=True, overflow="ellipsis")
        now = time.time()
        for shop in state.shops.values():
            status, beat, oven = _shop_cells(state, shop, now)
            leases = "-" if shop.session is None else str(shop.session.leases)
            shops.add_row(str(shop.number), str(shop.pid), status, beat, leases,
                          str(shop.baked), oven)  # fmt: skip
        # As many recent events as the terminal has room for.
        used = 10 + sum(max(1, min(CONCURRENCY, len(sh.baking))) for sh in state.shops.values())
        room = max(2, self.console.size.height - used)
        events = Text(no_wrap=True, overflow="ellipsis")
        for text, style in state.events[-room:]:
            events.append(text + "\n", style=style)
        events.rstrip()
        return Panel(
            Group(
                queue,
                Text(
                    "priority: urgent! 9 · pizza 5 · drink 1      (Rossis 2): grouped, in order",
                    style="dim",
                    no_wrap=True,
                    overflow="ellipsis",
                ),
                Text(""),
                shops,
                Text(""),
                events,
            ),
            title=Text.assemble(
                ("Conveyor pizza shop", "bold"), f" · {state.elapsed():.1f}s · seed {state.seed}"
            ),
            title_align="left",
            subtitle=f"broker {state.url} · SQLite, fsync",
            subtitle_align="right",
        )

    def audit(self, result: Audit, state: State) -> None:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(
            title="Audit: the shops' records and the broker's results",
            caption=RULE_NOTE,
            box=box.SIMPLE_HEAD,
            expand=True,
        )
        table.add_column("check", no_wrap=True)
        table.add_column("result", ratio=1, overflow="fold")
        table.add_column("must be", no_wrap=True)
        table.add_column("", no_wrap=True)
        for c in result.checks:
            mark = (
                Text("")
                if c.ok is None
                else Text("ok", style="green")
                if c.ok
                else Text("FAIL", style="bold red")
            )
            table.add_row(c.label, c.value, c.rule, mark)
        self.console.print(table)
        style = "bold green" if result.passed else "bold red"
        self.console.print(Text(result.summary(state.killed), style=style))


def _shop_cells(state: State, shop: ShopState, now: float) -> tuple[Text, Text, Text]:
    """A shop's state, heartbeat and ovens, for the live view."""
    from rich.text import Text

    if shop.killed_at is not None:
        held = ", ".join(sorted(state.held_at_kill)) or "nothing"
        closed = "closed" if shop.session is None else "open"
        return (
            Text("KILLED", style="bold red"),
            Text(closed, style="red"),
            Text(f"was baking {held}", style="red"),
        )
    if shop.exit_code is not None:
        return Text(f"exit {shop.exit_code}", style="yellow"), Text("-"), Text("")
    if shop.session is None:
        beat = Text("none", style="yellow")
    else:
        beat = Text(f"{max(0.0, now - shop.session.last_seen):.1f}s ago", style="green")
    by_id = state.by_id
    baking = [_order_text(by_id[r.order], r, now) for r in sorted(shop.baking.values(), key=_t)]
    oven = Text("\n".join(baking) or "idle", style="" if baking else "dim")
    return Text("alive", style="green"), beat, oven


def _t(record: Record) -> float:
    return record.t


def _order_text(order: Order, record: Record, now: float) -> str:
    left = max(0.0, record.t + record.seconds - now)
    again = f" (attempt {record.attempt})" if record.attempt > 1 else ""
    return f"{left:.1f}s {order.label()}{again}"


def make_view(live: bool) -> View:
    if not live:
        return View()
    try:
        from rich.console import Console
    except ImportError:
        print("(the live view needs rich: pip install 'conveyor-queue[demo]')")
        return View()
    console = Console()
    if not console.is_terminal:
        return View()
    return LiveView(console)
