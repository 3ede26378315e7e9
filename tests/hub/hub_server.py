"""A loopback Hugging Face Hub for tests: serves kernel repos from temp dirs to the real client.

It speaks the endpoints huggingface_hub calls to load a kernel, with the headers it relies on:

    GET  /api/{models,kernels}/<org>/<name>/revision/<rev>      repo info: sha, siblings
    GET  /api/{models,kernels}/<org>/<name>/refs                branches and tags
    GET  /api/{models,kernels}/<org>/<name>/tree/<rev>[/<path>]  files and folders (recursive=true)
    HEAD/GET /[kernels/]<org>/<name>/resolve/<rev>/<file>       X-Repo-Commit, ETag, Range

Unknown repos, revisions and files answer 404 with huggingface_hub's `X-Error-Code`. Faults can be
injected per path: an HTTP status (`fail`), a connection dropped halfway through a body (`drop`),
no answer at all (`silence`: the request is read, the connection held open for good), or a
body sent late (`delay`). Every request is recorded, so tests can count them.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_PREFIXES = {"models": "model", "kernels": "kernel"}


@dataclass
class FakeRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def commit_of(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        return revision if revision in self.commits else None


@dataclass
class Fault:
    pattern: str
    status: int | None  # None: drop the connection halfway through the body
    times: int
    method: str | None = None  # None: any


def git_blob_sha(content: bytes) -> str:
    """The oid git (and the Hub, as ETag) gives a small file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub:
    """Kernel repos in memory, served over HTTP on 127.0.0.1 while started."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self.user_agents: list[str] = []  # the User-Agent header of each request, in order
        self.faults: list[Fault] = []
        self.hold: tuple[str, int] | None = None  # (pattern, n): file bodies wait until n HEADs of it came
        self.silences: list[Fault] = []  # requests never answered (`status` unused)
        self.delays: list[tuple[str, float]] = []  # (pattern, seconds): file bodies start that late
        self._lock = threading.Lock()
        self._heads = threading.Condition(self._lock)
        self._server: ThreadingHTTPServer | None = None

    # -- content ----------------------------------------------------------------------------

    def publish(self, repo_id: str, source: Path, *, repo_type: str = "kernel", branch: str | None = "main",
                tags: tuple[str, ...] = ()) -> str:
        """Commit every file under `source` to `repo_id`; move `branch` and `tags` to it; return the sha."""
        files = {p.relative_to(source).as_posix(): p.read_bytes() for p in sorted(Path(source).rglob("*")) if p.is_file()}
        manifest = repo_id.encode() + b"".join(name.encode() + hashlib.sha256(data).digest() for name, data in files.items())
        commit = hashlib.sha1(manifest).hexdigest()
        repo = self.repos.setdefault((repo_type, repo_id), FakeRepo())
        repo.commits[commit] = files
        if branch:
            repo.branches[branch] = commit
        for tag in tags:
            repo.tags[tag] = commit
        return commit

    # -- faults and counting ----------------------------------------------------------------

    def fail(self, pattern: str, status: int, times: int = 1_000_000, method: str | None = None) -> None:
        """Answer `status` to the next `times` requests (of `method`) whose path contains `pattern`."""
        self.faults.append(Fault(pattern, status, times, method))

    def drop(self, pattern: str, times: int = 1) -> None:
        """Cut the connection halfway through the next `times` file bodies whose path contains `pattern`."""
        self.faults.append(Fault(pattern, None, times))

    def silence(self, pattern: str = "", method: str | None = None, times: int = 1_000_000) -> None:
        """Accept the next `times` requests (of `method`) whose path contains `pattern` and never answer
        them; `silence()`: a Hub that accepts every connection and says nothing.

        A silenced Hub stays up after `stop()`, silent on every path, until the process exits: closing
        its connections would wake the calls kernel_fx abandoned, and huggingface_hub's retries of
        those (connection refused) log, and close its shared HTTP client under the next test's requests."""
        self.silences.append(Fault(pattern, None, times, method))

    def delay(self, pattern: str, seconds: float) -> None:
        """Send the headers of file bodies whose path contains `pattern` at once, the body `seconds` later."""
        self.delays.append((pattern, seconds))

    def count(self, pattern: str = "") -> int:
        """How many requests so far had `pattern` in their path."""
        with self._lock:
            return sum(pattern in path for _, path in self.requests)

    def _fault_for(self, method: str, path: str, body: bool) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.method not in (None, method):
                    continue
                if fault.times > 0 and fault.pattern in path and (fault.status is not None or body):
                    fault.times -= 1
                    return fault
        return None

    def _silent(self, method: str, path: str) -> bool:
        with self._lock:
            for silence in self.silences:
                if silence.times > 0 and silence.pattern in path and silence.method in (None, method):
                    silence.times -= 1
                    return True
        return False

    def _wait_for_heads(self, filename: str) -> None:
        """Hold a file body until every expected client asked for the file: their downloads overlap."""
        if self.hold is None or self.hold[0] not in filename:
            return
        pattern, wanted = self.hold
        with self._heads:
            self._heads.wait_for(lambda: sum(m == "HEAD" and pattern in p for m, p in self.requests) >= wanted, timeout=30)

    # -- serving ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the hub first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.silences:  # see `silence`: stay up, and say nothing to anyone
            self.silences.append(Fault("", None, 1_000_000))
            self._server = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client pools connections
    fake: FakeHub

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._dispatch(body=False)

    def do_GET(self) -> None:
        self._dispatch(body=True)

    # -- routing ----------------------------------------------------------------------------

    def _dispatch(self, body: bool) -> None:
        url = urlsplit(self.path)
        with self.fake._lock:
            self.fake.requests.append((self.command, url.path))
            self.fake.user_agents.append(self.headers.get("User-Agent", ""))
            self.fake._heads.notify_all()
        if self.fake._silent(self.command, url.path):
            threading.Event().wait()  # never set: a daemon thread holding the connection until exit
        fault = self.fake._fault_for(self.command, url.path, body)
        if fault is not None and fault.status is not None:
            return self._send_json(fault.status, {"error": "injected fault"})
        parts = url.path.split("/")[1:]  # segments stay quoted: a revision may hold %2F
        if parts[:1] == ["api"] and len(parts) >= 5 and parts[1] in _PREFIXES:
            return self._api(_PREFIXES[parts[1]], f"{parts[2]}/{parts[3]}", parts[4:], parse_qs(url.query))
        repo_type = "model"
        if parts[:1] == ["kernels"]:
            repo_type, parts = "kernel", parts[1:]
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote("/".join(parts[4:])), body, fault)
        self._send_json(404, {"error": "no such endpoint"})

    def _repo(self, repo_type: str, repo_id: str) -> FakeRepo | None:
        repo = self.fake.repos.get((repo_type, repo_id))
        if repo is None:
            self._send_json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return repo

    def _commit(self, repo: FakeRepo, revision: str) -> str | None:
        commit = repo.commit_of(revision)
        if commit is None:
            self._send_json(404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"})
        return commit

    def _api(self, repo_type: str, repo_id: str, rest: list[str], query: dict) -> None:
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return
        if rest == ["refs"]:
            return self._send_json(200, {
                "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in repo.branches.items()],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in repo.tags.items()],
                "converts": [],
            })
        if len(rest) == 2 and rest[0] == "revision":
            commit = self._commit(repo, unquote(rest[1]))
            if commit:
                siblings = [{"rfilename": name} for name in repo.commits[commit]]
                self._send_json(200, {"id": repo_id, "sha": commit, "private": False, "siblings": siblings})
            return
        if len(rest) >= 2 and rest[0] == "tree":
            commit = self._commit(repo, unquote(rest[1]))
            if commit:
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                self._tree(repo.commits[commit], unquote("/".join(rest[2:])), recursive)
            return
        self._send_json(404, {"error": "no such endpoint"})

    def _tree(self, files: dict[str, bytes], path: str, recursive: bool) -> None:
        prefix = f"{path}/" if path else ""
        below = {name[len(prefix):]: data for name, data in files.items() if name.startswith(prefix)}
        if path and not below:
            return self._send_json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        entries: dict[str, dict] = {}
        for rel, data in below.items():
            pieces = rel.split("/")
            depth = len(pieces) if recursive else 1
            for i in range(1, min(depth, len(pieces) - 1) + 1):
                folder = prefix + "/".join(pieces[:i])
                entries[folder] = {"type": "directory", "oid": git_blob_sha(folder.encode()), "size": 0, "path": folder}
            if recursive or len(pieces) == 1:
                name = prefix + rel
                entries[name] = {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": name}
        self._send_json(200, sorted(entries.values(), key=lambda e: e["path"]))

    def _resolve(self, repo_type: str, repo_id: str, revision: str, filename: str, body: bool, fault: Fault | None) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = repo and self._commit(repo, revision)
        if not commit:
            return
        data = repo.commits[commit].get(filename)
        if data is None:
            return self._send_json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        start = _range_start(self.headers.get("Range"))
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{git_blob_sha(data)}"')
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        self.fake._wait_for_heads(filename)
        for pattern, seconds in self.fake.delays:
            if pattern in filename:
                self.wfile.flush()
                time.sleep(seconds)
        if fault is not None:  # drop: send half of the body, then cut the connection
            self.wfile.write(data[start:start + (len(data) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data[start:])

    def _send_json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _range_start(header: str | None) -> int:
    if not header or not header.startswith("bytes="):
        return 0
    return int(header[len("bytes="):].split("-", 1)[0] or 0)
