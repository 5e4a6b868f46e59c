#!/usr/bin/env python3
"""Forwards TCP connections on 127.0.0.1 to a Unix socket, byte for byte.

Tools that speak HTTP only over TCP (schemathesis's command line, wrk) reach the API
socket of `swiftvisor firecracker` through it. It does not read HTTP: every connection
is copied both ways until either side closes.

    Tools/api/bridge.py UNIX_SOCKET [PORT]

prints the port it listens on (PORT, or a free one when 0 or absent) on its first line.
"""
import asyncio
import signal
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            writer.close()


async def main(socket_path: str, port: int) -> None:
    async def serve(client_reader, client_writer):
        try:
            unix_reader, unix_writer = await asyncio.open_unix_connection(socket_path)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, unix_writer), pipe(unix_reader, client_writer))
        unix_writer.close()
        client_writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    # A parent may have started it with these blocked (a test runner's thread that had
    # blocked them for its VMs): it must still stop when told.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: bridge.py UNIX_SOCKET [PORT]")
    try:
        asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 0))
    except KeyboardInterrupt:
        pass
