"""The pizza shop: ``conveyor demo``, an application of Conveyor's public API.

It is not part of the runtime: nothing in conveyor.core, store, broker,
server, client or worker imports it. One module per job:

  app.py        the kitchen: the task app each shop worker runs
  orders.py     what the customers order, and when
  processes.py  the child processes: one broker, the shops
  state.py      what the demo knows while it runs
  views.py      plain progress lines, or the live view (rich: the ``demo`` extra)
  audit.py      the shops' records and the broker's results, checked
  run.py        the run itself: open, order, kill a shop, audit
"""
