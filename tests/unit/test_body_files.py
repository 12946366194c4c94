"""The body-file shelf (edge/body_files.py): sealed memfds bounded in bytes and files, and the
head-then-sendfile call, C and Python alike, over real loopback TCP sockets."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

import pytest

from kalkan.edge import body_files
from kalkan.edge.body_files import MIN_SIZE, BodyFile, BodyFiles, send_head_and_file_py

SENDERS: list[Callable[[int, bytes, int, int], int]] = [send_head_and_file_py]
try:
    from kalkan.edge._sendfile import send_head_and_file as send_c
except ImportError:  # a pure-Python build: the reference alone
    pass
else:
    SENDERS.append(send_c)


def body(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


def read_all(fd: int, size: int) -> bytes:
    return os.pread(fd, size + 1, 0)


def test_a_file_holds_the_body_and_is_sealed() -> None:
    shelf = BodyFiles(1 << 20)
    data = body(MIN_SIZE + 5)
    file = shelf.make(data)
    assert file is not None and file.fd >= 0 and file.size == len(data)
    assert read_all(file.fd, file.size) == data
    assert shelf.bytes == len(data)
    with pytest.raises(PermissionError):  # F_SEAL_WRITE: a send in flight never sees a change
        os.pwrite(file.fd, b"x", 0)
    with pytest.raises(PermissionError):  # F_SEAL_SHRINK
        os.ftruncate(file.fd, 1)
    shelf.close()
    assert file.fd == -1 and shelf.bytes == 0


def test_small_bodies_and_bodies_over_the_budget_get_no_file() -> None:
    shelf = BodyFiles(4 * MIN_SIZE)
    assert shelf.make(body(MIN_SIZE - 1)) is None
    assert shelf.make(body(4 * MIN_SIZE + 1)) is None
    assert shelf.bytes == 0 and not shelf.files


def test_a_zero_budget_turns_files_off() -> None:
    shelf = BodyFiles(0)
    assert shelf.min_size > 1 << 40  # the pipeline's size check never passes
    assert shelf.make(body(MIN_SIZE)) is None


def test_the_oldest_file_is_closed_to_stay_in_the_byte_budget() -> None:
    shelf = BodyFiles(3 * MIN_SIZE)
    files = [shelf.make(body(MIN_SIZE, seed)) for seed in range(5)]
    assert all(f is not None for f in files)
    assert [f.fd >= 0 for f in files if f] == [False, False, True, True, True]
    assert shelf.bytes == 3 * MIN_SIZE and len(shelf.files) == 3
    for seed, f in enumerate(files[2:], start=2):  # the survivors hold their own bodies
        assert f is not None and read_all(f.fd, f.size) == body(MIN_SIZE, seed)
    shelf.close()


def test_the_oldest_file_is_closed_to_stay_in_the_file_budget() -> None:
    shelf = BodyFiles(1 << 30, max_files=2)
    files = [shelf.make(body(MIN_SIZE, seed)) for seed in range(4)]
    assert [f.fd >= 0 for f in files if f] == [False, False, True, True]
    assert len(shelf.files) == 2 and shelf.bytes == 2 * MIN_SIZE
    shelf.close()


def test_a_refused_memfd_is_counted_and_the_hit_goes_by_copy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    shelf = BodyFiles(1 << 20)

    def out_of_descriptors(*_: object) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(body_files.os, "memfd_create", out_of_descriptors)
    assert shelf.make(body(MIN_SIZE)) is None
    assert shelf.failures == 1 and shelf.bytes == 0


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair: (the sender, non-blocking; the receiver)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname())
        receiver, _ = listener.accept()
    sender.setblocking(False)
    try:
        yield sender, receiver
    finally:
        sender.close()
        receiver.close()


def shelved(size: int) -> tuple[BodyFiles, BodyFile]:
    """A shelf holding one file of `size` bytes of `body(size)`."""
    shelf = BodyFiles(max(1 << 20, 2 * size))
    file = shelf.make(body(size))
    assert file is not None
    return shelf, file


def receive(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(5.0)
    got = bytearray()
    while len(got) < size:
        chunk = sock.recv(size - len(got))
        if not chunk:
            break
        got += chunk
    return bytes(got)


@pytest.mark.parametrize("send", SENDERS, ids=lambda f: f.__module__)
def test_head_then_file_arrive_whole(send: Callable[[int, bytes, int, int], int],
                                     tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = tcp_pair
    shelf, file = shelved(20 * 1024)
    data = body(20 * 1024)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data)
    for _ in range(3):  # the file is read from its start every time
        assert send(sender.fileno(), head, file.fd, file.size) == len(head) + len(data)
        assert receive(receiver, len(head) + len(data)) == head + data
    shelf.close()


@pytest.mark.parametrize("send", SENDERS, ids=lambda f: f.__module__)
def test_a_full_socket_takes_part_and_says_how_much(
        send: Callable[[int, bytes, int, int], int],
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = tcp_pair
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    shelf, file = shelved(8 << 20)  # far more than the sender's and the receiver's buffers
    data = body(8 << 20)
    head = b"HTTP/1.1 200 OK\r\n\r\n"
    sent = send(sender.fileno(), head, file.fd, file.size)
    assert len(head) < sent < len(head) + len(data)  # never blocks, never raises
    assert receive(receiver, sent) == (head + data)[:sent]
    shelf.close()


@pytest.mark.parametrize("send", SENDERS, ids=lambda f: f.__module__)
def test_a_closed_peer_is_reported_by_the_count_not_by_a_signal(
        send: Callable[[int, bytes, int, int], int],
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = tcp_pair
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    receiver.close()  # with linger 0: a reset
    shelf, file = shelved(MIN_SIZE)
    sent = 0
    for _ in range(3):  # the first send may still be taken before the reset is seen
        sent = send(sender.fileno(), b"HTTP/1.1 200 OK\r\n\r\n", file.fd, file.size)
    assert sent == 0
    shelf.close()
