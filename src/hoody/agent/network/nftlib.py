"""nftables from this process, through libnftables: the library the `nft` program is a
front end of, with the same command language and the same one-transaction batches.

Why not `nft -f -`: every copy and every delete changes the node's table once, and an
`nft` process costs more than the change itself. Measured here (2-core VM, one tenant's
chain, rules and map entry per change): 2.75 ms of CPU per change through the program,
0.26 ms through the library, most of the difference being the process (fork, exec,
loading nft's libraries). The library comes with the nftables package (libnftables1).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import weakref

from hoody.errors import MissingDependency

__all__ = ["Nftables"]

_OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON (libnftables.h)


@functools.cache
def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("nftables")
    if name is None:
        raise MissingDependency(
            "libnftables is not installed; run `make setup` or `apt-get install nftables`"
        )
    lib = ctypes.CDLL(name)
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_free.restype = None
    for buffered in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
        getattr(lib, buffered).argtypes = [ctypes.c_void_p]
    for getter in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, getter).argtypes = [ctypes.c_void_p]
        getattr(lib, getter).restype = ctypes.c_char_p
    lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_ctx_output_set_flags.restype = None
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    return lib


class Nftables:
    """One libnftables context; `run` is thread-safe (a context is not, so calls take
    turns). The context is freed with this object."""

    def __init__(self) -> None:
        self._lib = _library()
        ctx = self._lib.nft_ctx_new(0)
        if not ctx:
            raise MemoryError("libnftables could not make a context")
        self._ctx = ctx
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        self._plain = self._lib.nft_ctx_output_get_flags(ctx)
        self._lock = threading.Lock()
        weakref.finalize(self, self._lib.nft_ctx_free, ctx)

    def run(self, commands: str, json_output: bool = False) -> tuple[bool, str, str]:
        """Run `commands` as `nft -f -` would: all of them in one transaction, or none.
        (ok, output, errors); output in nft's JSON with `json_output`."""
        lib, ctx = self._lib, self._ctx
        with self._lock:
            lib.nft_ctx_output_set_flags(ctx, self._plain | (_OUTPUT_JSON if json_output else 0))
            code = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
            # Reading a buffer hands it over and starts a new one for the next run.
            output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            errors = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        return code == 0, output, errors
