"""The MySQL/MariaDB session: a sans-IO state machine per client connection (``session``),
the events it is fed (``events``), the commands it returns (``commands``), the upstream
login (``upstream``), its governance point (``governance``) and audit bookkeeping
(``auditing``). No I/O, no awaits: ``server/mysql_proxy.py`` is its shell."""
