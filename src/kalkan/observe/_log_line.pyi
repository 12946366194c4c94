# The C module's signature (src/kalkan/observe/_log_line.c; the Python reference is
# access_log.append_line_py).
def append(buf: bytearray, stamp: str, ms: str, client: str, middle: str, total: str,
           decision: str, reason: str, agent: str, ua: bytes | None, referer: bytes | None,
           /) -> bool: ...
