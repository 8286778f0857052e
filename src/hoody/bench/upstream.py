"""A keep-alive HTTP/1.1 server that answers every request with a tiny body: the
tenant app of `hoody bench router` (the demo app closes each connection, which would
measure connection setup instead of proxying). Stdlib only; copied into a template.
"""

import asyncio
import os

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"


class Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        # Bodiless requests (the benchmark sends GETs): one answer per head.
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.transport.write(RESPONSE)


def main() -> None:
    loop = asyncio.new_event_loop()
    port = int(os.environ.get("PORT", "8080"))
    loop.run_until_complete(loop.create_server(Answer, "0.0.0.0", port, backlog=1024))
    print(f"bench upstream listening on :{port}", flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
