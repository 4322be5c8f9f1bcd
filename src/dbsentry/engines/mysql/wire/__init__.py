"""Sans-IO MySQL/MariaDB client/server protocol: packet framing, primitives, typed messages
with decoders and encoders both ways, the binary protocol's values, and authentication.

No sockets, no asyncio, no policy; every length is checked before anything is buffered or
allocated, and a peer that breaks the protocol gets :class:`dbsentry.errors.ProtocolError`.
"""
