"""Fixtures: a shared `troupe serve` for the whole session, and a factory for
servers with special flags (stopped at the end of the test or module)."""

from __future__ import annotations

import pytest

from helpers import LIVE, Server


@pytest.fixture(scope="session")
def logdir(tmp_path_factory):
    return tmp_path_factory.mktemp("troupe-logs")


@pytest.fixture(scope="session")
def server(logdir):
    """The default server, shared by every test that needs no special flags."""
    s = Server(logdir, "default", []).start()
    yield s
    s.kill()


@pytest.fixture(scope="session")
def client(server):
    """The official OpenAI client against the default server."""
    c = server.openai()
    yield c
    c.close()


@pytest.fixture(scope="session")
def http(server):
    with server.client() as c:
        yield c


@pytest.fixture
def start_server(logdir, request):
    """`start_server(name, flags, api_key=None)` → a started Server, killed at
    the end of the test."""
    started: list[Server] = []

    def start(name: str, flags: list[str], api_key: str | None = None) -> Server:
        s = Server(logdir, f"{request.node.name}-{name}", flags, api_key).start()
        started.append(s)
        request.node.troupe_servers = started
        return s

    yield start
    for s in started:
        s.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        shown = list(getattr(item, "troupe_servers", []))
        shown += [s for s in LIVE if s not in shown]
        for s in shown:
            rep.sections.append((f"troupe serve log ({s.name}, tail)", s.log_tail()))
