"""node/probes.py: an exec probe's output is read within its deadline, bounded, and shown as
one line a terminal cannot be tricked by (a container writes it; operators read it in events)."""

from __future__ import annotations

import os
import socket
import threading
import time

from node.probes import OUTPUT_READ, OUTPUT_SHOWN, one_line, probe_http, read_output


def test_one_line_escapes_control_and_format_characters() -> None:
    hostile = "\x1b[2J\x1b]0;owned\x07ok\r\nnext\u202eright-to-left\x7f\x9b"
    assert one_line(hostile.encode()) == "\\x1b[2J\\x1b]0;owned\\x07ok\\r\\nnext\\u202eright-to-left\\x7f\\x9b"
    assert one_line("café ✓\n".encode()) == "café ✓"  # printable text stays as it is
    assert one_line(b"\xff\xfe bad utf-8") == "\ufffd\ufffd bad utf-8"


def test_one_line_is_cut_short() -> None:
    assert one_line(b"x" * 1000) == "x" * OUTPUT_SHOWN + "..."


def test_read_output_keeps_the_start_of_each_stream() -> None:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    os.write(out_w, b"out\n")
    os.write(err_w, b"err\n")
    os.close(out_w)
    os.close(err_w)
    try:
        assert read_output([out_r, err_r], time.monotonic() + 5) == b"out\nerr\n"
    finally:
        os.close(out_r)
        os.close(err_r)


def test_endless_output_is_read_until_the_deadline_and_dropped() -> None:
    r, w = os.pipe()
    stop = threading.Event()

    def spew() -> None:
        while not stop.is_set():
            try:
                os.write(w, b"y\n" * 4096)
            except OSError:
                return

    writer = threading.Thread(target=spew)
    writer.start()
    try:
        got = read_output([r], time.monotonic() + 0.3)  # returns at the deadline, the writer never blocks it
        assert len(got) == OUTPUT_READ
    finally:
        stop.set()
        os.close(r)
        writer.join(5)
        os.close(w)


def test_an_http_answer_cannot_write_to_a_terminal() -> None:
    """A container answering a status line of escape sequences: http.client's error quotes the
    line, and the probe's detail (in events, read in terminals) has it escaped."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(b"\x1b]0;owned\x07\x1b[2J\r\n\r\n")

    t = threading.Thread(target=answer)
    t.start()
    try:
        result = probe_http("127.0.0.1", port, "/healthz", 5.0)
    finally:
        t.join(5)
        server.close()
    assert not result.ok
    assert "\x1b" not in result.detail and "\x07" not in result.detail
    assert "\\x1b]0;owned\\x07\\x1b[2J" in result.detail
