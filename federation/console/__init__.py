"""``allfed console``: a local, read-only web view of the site ledgers and run directories.

The privacy officer sees how much of the participants' budget has gone, to which study and run,
for what, and what left the site; the central team sees its runs, one in progress live. It only
reads (every figure from the ledgers comes from the same functions as ``allfed privacy ledger``
and ``allfed privacy audit``), listens on loopback by default and needs the token it prints.
"""
