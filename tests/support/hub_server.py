"""A small local stand-in for the Hugging Face Hub HTTP API, serving model repos to the tests on 127.0.0.1.

Real ``huggingface_hub`` / ``diffusers`` upload and download code runs against it, because the real Hub cannot be
reached from the test machines. Standard library only. It speaks the part of the API that the tests' calls use
(``tests/test_hub*.py``), with huggingface_hub 2.x on the Git-LFS upload path (``HF_HUB_DISABLE_XET=1``; the Xet
protocol is NOT implemented):

=======  ====================================================  =====================================================
method   path                                                  used by
=======  ====================================================  =====================================================
POST     /api/repos/create                                     ``create_repo`` (409 if it exists)
POST     /api/validate-yaml                                    commits touching README.md
GET      /api/models/{repo}[/revision/{rev}]                   ``repo_info`` / ``model_info``, downloads
GET      /api/models/{repo}/tree/{rev}?recursive=              ``list_repo_files``, ``snapshot_download``
GET      /api/models/{repo}/commits/{rev}                      ``list_repo_commits``
POST     /api/models/{repo}/branch/{branch}                    ``create_branch`` (409 if it exists)
POST     /api/models/{repo}/preupload/{rev}                    upload mode ("regular" / "lfs") per file
POST     /{repo}.git/info/lfs/objects/batch                    LFS batch API, "basic" upload transfer
PUT      /__lfs__/upload/{nonce}                               the LFS upload URL handed out by batch
POST     /{repo}.git/info/lfs/objects/verify                   LFS verify action
POST     /api/models/{repo}/commit/{rev}[?create_pr=1]         ndjson commit (header / file / lfsFile / deletedFile)
HEAD+GET /{repo}/resolve/{rev}/{path}                          ``hf_hub_download`` & co
=======  ====================================================  =====================================================

Behaviour worth knowing:

* Every request is appended to ``hub.requests`` (a :class:`RecordedRequest` with ``method``, ``path``
  (URL-decoded, no query), ``query``, ``headers``, ``authorization`` and the response ``status``).
  Nothing is logged or written to disk about requests, so tokens never leave memory.
* Write requests (create repo, branch, preupload, LFS batch/verify, commit) need ``Authorization: Bearer <token>``;
  without one they get 401. With ``tokens=[...]`` only those tokens are accepted. The LFS upload URL is authorised
  by its unguessable nonce (the client sends no token there, exactly like a pre-signed S3 URL). Private repos are
  invisible (401 ``RepoNotFound``) without a token.
* A new repo gets an initial commit holding a default ``.gitattributes`` (as on the real Hub), so
  ``hub.files(repo)`` includes ``.gitattributes``.
* Upload mode: "lfs" if the file is larger than 10 MiB, matches a ``filter=lfs`` pattern of the branch's
  ``.gitattributes`` or its 512-byte sample contains a NUL byte (binary); "regular" otherwise.
* Files are served directly by ``/resolve`` (no redirect): regular files with ``ETag`` = git blob sha1, LFS
  files with ``ETag``/``X-Linked-Etag`` = sha256 and ``X-Linked-Size``; always ``X-Repo-Commit``.
* Every commit gets a new 40-hex sha; each branch / ``refs/pr/N`` keeps its history (``hub.commits``).

Usage::

    with LocalHub() as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_test")   # with HF_HUB_DISABLE_XET=1 (env or constants)
        ...
        assert hub.files("user/repo")["config.json"] == b"..."

Standalone: ``python tests/support/hub_server.py --port 0 --root DIR`` prints the endpoint on stdout, then serves
until SIGINT/SIGTERM. State is persisted under ``root`` (``state.json`` + ``blobs/``) and reloaded on start.
"""

from __future__ import annotations

import argparse
import base64
import copy
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["LocalHub", "RecordedRequest", "HubError"]

# The `.gitattributes` the Hub puts in every new model repo (abridged to the usual weight formats).
DEFAULT_GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in (
    "*.bin", "*.ckpt", "*.h5", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.pickle", "*.pkl", "*.pt", "*.pth",
    "*.safetensors", "*.tar", "*.zip", "*tfevents*"))
LFS_THRESHOLD = 10 * 1024 * 1024
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_MAX_RECORDED_BODY = 64 * 1024


class HubError(Exception):
    """An HTTP error answered by the fake Hub (status, message and optional ``X-Error-Code``)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


@dataclass
class RecordedRequest:
    method: str
    path: str  # URL-decoded path, without the query string
    raw_path: str  # path + query exactly as received
    query: dict[str, list[str]]
    headers: dict[str, str]
    authorization: str | None
    body: bytes | None = field(default=None, repr=False)  # kept only for bodies <= 64 KiB
    body_size: int = 0
    status: int | None = None

    def json(self) -> Any:
        return json.loads(self.body or b"null")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _lfs_patterns(gitattributes: str) -> list[str]:
    patterns = []
    for line in gitattributes.splitlines():
        parts = line.strip().split()
        if parts and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches(path: str, pattern: str) -> bool:
    """Approximate gitattributes matching: a pattern without '/' matches the basename anywhere."""
    if "/" not in pattern.strip("/"):
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern) or fnmatch.fnmatchcase(path, pattern)
    return fnmatch.fnmatchcase(path, pattern.lstrip("/")) or fnmatch.fnmatchcase(path, pattern.replace("**/", ""))


class LocalHub:
    """In-process fake Hub server; see the module docstring. Use as a context manager."""

    def __init__(self, root: str | os.PathLike | None = None, *, port: int = 0, username: str = "test-user",
                 tokens: list[str] | None = None):
        self._own_root = root is None
        self.root = str(root) if root is not None else tempfile.mkdtemp(prefix="local-hub-")
        os.makedirs(os.path.join(self.root, "blobs"), exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port
        self.username = username
        self.tokens = set(tokens) if tokens is not None else None

        self.requests: list[RecordedRequest] = []
        self.lfs_uploads: list[str] = []  # sha256 of every object received through the LFS upload URL
        self._lock = threading.RLock()
        self._repos: dict[str, dict] = {}  # repo id -> repo
        self._upload_nonces: dict[str, tuple[str, str, int]] = {}  # nonce -> (repo id, oid, size)
        self._counter = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._load_state()

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> "LocalHub":
        server = _Server((self.host, self.port), _Handler)
        server.hub = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.name = f"LocalHub-{server.server_address[1]}"
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_all_connections()
            server.server_close()
            self._thread.join(timeout=5)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
            self._own_root = False

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for tests
    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()
            self.lfs_uploads.clear()

    def find_requests(self, method: str | None = None, contains: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests
                    if (method is None or r.method == method.upper()) and (contains is None or contains in r.path)]

    def repo_exists(self, repo_id: str) -> bool:
        with self._lock:
            return repo_id in self._repos

    def is_private(self, repo_id: str) -> bool:
        with self._lock:
            return bool(self._get_repo(repo_id)["private"])

    def head(self, repo_id: str, revision: str = "main") -> str:
        """Commit sha that ``revision`` (branch, ``refs/pr/N`` or sha) points to."""
        with self._lock:
            return self._resolve_rev(self._get_repo(repo_id), revision)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """``{path: content}`` of the tree at ``revision`` (includes ``.gitattributes``)."""
        with self._lock:
            tree = self._tree(repo_id, revision)
            return {path: self._read_blob(entry["sha256"]) for path, entry in sorted(tree.items())}

    def tree(self, repo_id: str, revision: str = "main") -> dict[str, dict]:
        """``{path: {"sha256", "size", "lfs", "git_oid"}}`` at ``revision``."""
        with self._lock:
            return copy.deepcopy(self._tree(repo_id, revision))

    def commits(self, repo_id: str, revision: str = "main") -> list[dict]:
        """History of ``revision``, newest first. Each commit: ``id``, ``parents``, ``title``, ``message``,
        ``date``, ``added`` (paths sent inline), ``lfs`` (paths sent as LFS pointers), ``deleted``."""
        with self._lock:
            repo = self._get_repo(repo_id)
            return [{k: copy.deepcopy(v) for k, v in repo["commits"][sha].items() if k != "tree"}
                    for sha in self._history(repo, self._resolve_rev(repo, revision))]

    def create_repo(self, repo_id: str, *, private: bool = False) -> None:
        """Create a repo directly (no HTTP), e.g. to seed a test."""
        with self._lock:
            self._create_repo(repo_id, private)
            self._save_state()

    # ------------------------------------------------------------------ storage
    def _get_repo(self, repo_id: str) -> dict:
        repo = self._repos.get(repo_id)
        if repo is None:
            raise KeyError(f"No repo {repo_id!r} on the local hub")
        return repo

    def _tree(self, repo_id: str, revision: str) -> dict:
        repo = self._get_repo(repo_id)
        return repo["commits"][self._resolve_rev(repo, revision)]["tree"]

    def _blob_path(self, sha256: str) -> str:
        return os.path.join(self.root, "blobs", sha256)

    def _store_blob(self, data: bytes, *, lfs: bool) -> dict:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self._blob_path(sha256)
        if not os.path.exists(path):
            tmp = f"{path}.{secrets.token_hex(4)}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        git_oid = _git_blob_sha1(_lfs_pointer(sha256, len(data)) if lfs else data)
        return {"sha256": sha256, "size": len(data), "lfs": lfs, "git_oid": git_oid}

    def _read_blob(self, sha256: str) -> bytes:
        with open(self._blob_path(sha256), "rb") as f:
            return f.read()

    def _state_path(self) -> str:
        return os.path.join(self.root, "state.json")

    def _load_state(self) -> None:
        if os.path.exists(self._state_path()):
            with open(self._state_path()) as f:
                state = json.load(f)
            self._repos, self._counter = state["repos"], state["counter"]
            for repo in self._repos.values():  # JSON turned int keys into str
                repo["prs"] = {int(k): v for k, v in repo["prs"].items()}

    def _save_state(self) -> None:
        tmp = f"{self._state_path()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"repos": self._repos, "counter": self._counter}, f)
        os.replace(tmp, self._state_path())

    def _create_repo(self, repo_id: str, private: bool) -> dict:
        if repo_id in self._repos:
            raise HubError(409, "You already created this model repo", headers={"X-Error-Code": "RepoExists"})
        repo = {"id": repo_id, "private": bool(private), "created_at": _now(), "refs": {}, "commits": {}, "prs": {},
                "lfs_oids": []}
        self._repos[repo_id] = repo
        tree = {".gitattributes": self._store_blob(DEFAULT_GITATTRIBUTES.encode(), lfs=False)}
        self._new_commit(repo, "main", None, tree, "initial commit", "", sorted(tree), [], [])
        return repo

    def _new_commit(self, repo, ref, parent, tree, title, message, added, lfs, deleted) -> str:
        self._counter += 1
        payload = json.dumps([repo["id"], ref, parent, title, message, self._counter, time.time_ns(),
                              sorted((p, e["git_oid"]) for p, e in tree.items())]).encode()
        sha = hashlib.sha1(payload).hexdigest()
        repo["commits"][sha] = {"id": sha, "parents": [parent] if parent else [], "title": title, "message": message,
                                "date": _now(), "authors": [self.username], "added": list(added), "lfs": list(lfs),
                                "deleted": list(deleted), "tree": tree}
        repo["refs"][ref] = sha
        return sha

    def _history(self, repo: dict, sha: str) -> list[str]:
        out = []
        while sha:
            out.append(sha)
            parents = repo["commits"][sha]["parents"]
            sha = parents[0] if parents else None
        return out

    def _resolve_rev(self, repo: dict, revision: str | None) -> str:
        rev = revision or "main"
        if rev in repo["refs"]:
            return repo["refs"][rev]
        if _SHA1_RE.match(rev) and rev in repo["commits"]:
            return rev
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _upload_mode(self, repo: dict, revision: str, path: str, size: int, sample: bytes) -> str:
        if size > LFS_THRESHOLD or b"\x00" in sample:
            return "lfs"
        attrs = repo["commits"][self._resolve_rev(repo, revision)]["tree"].get(".gitattributes")
        if attrs is not None:
            patterns = _lfs_patterns(self._read_blob(attrs["sha256"]).decode("utf-8", "replace"))
            if any(_matches(path, p) for p in patterns):
                return "lfs"
        return "regular"

    # ------------------------------------------------------------------ JSON shapes
    @staticmethod
    def _file_json(path: str, entry: dict) -> dict:
        out = {"type": "file", "oid": entry["git_oid"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            out["lfs"] = {"oid": entry["sha256"], "size": entry["size"],
                          "pointerSize": len(_lfs_pointer(entry["sha256"], entry["size"]))}
        return out

    @staticmethod
    def _dir_json(path: str, tree: dict) -> dict:
        children = sorted((p, e["git_oid"]) for p, e in tree.items() if p.startswith(path + "/"))
        oid = hashlib.sha1(json.dumps(children).encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    @staticmethod
    def _dirs_of(tree: dict) -> set[str]:
        dirs = set()
        for p in tree:
            parts = p.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        return dirs

    def _repo_info_json(self, repo: dict, sha: str, blobs: bool) -> dict:
        commit = repo["commits"][sha]
        siblings = []
        for path, entry in sorted(commit["tree"].items()):
            s: dict[str, Any] = {"rfilename": path}
            if blobs:
                s["size"] = entry["size"]
                s["blobId"] = entry["git_oid"]
                if entry["lfs"]:
                    s["lfs"] = {"size": entry["size"], "sha256": entry["sha256"],
                                "pointerSize": len(_lfs_pointer(entry["sha256"], entry["size"]))}
            siblings.append(s)
        return {
            "_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24], "id": repo["id"], "modelId": repo["id"],
            "author": repo["id"].split("/")[0], "sha": sha, "lastModified": commit["date"],
            "createdAt": repo["created_at"], "private": repo["private"], "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings, "spaces": [],
            "usedStorage": sum(e["size"] for e in commit["tree"].values()),
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: LocalHub

    def __init__(self, *args, **kwargs):
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def close_all_connections(self) -> None:
        """Kill idle keep-alive connections so that handler threads end with the server."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries a Content-Length
    server: _Server

    # ---------------------------------------------------------------- plumbing
    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence: requests are recorded in memory
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        rec = RecordedRequest(
            method=method,
            path=unquote(split.path),
            raw_path=self.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=dict(self.headers.items()),
            authorization=self.headers.get("Authorization"),
            body=body if len(body) <= _MAX_RECORDED_BODY else None,
            body_size=len(body),
        )
        with hub._lock:
            hub.requests.append(rec)
        self._rec, self._body, self._query = rec, body, rec.query
        try:
            self._route(method, [unquote(s) for s in split.path.split("/")[1:]])
        except HubError as e:
            self._send_error(e)
        except Exception as e:  # a bug in the fake: report it as a 500 the client can show
            import traceback

            traceback.print_exc(file=sys.stderr)
            self._send_error(HubError(500, f"LocalHub internal error: {type(e).__name__}: {e}"))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str | None = None):
        self._rec.status = status
        self.send_response(status)
        hdrs = dict(headers or {})
        if content_type:
            hdrs.setdefault("Content-Type", content_type)
        hdrs.setdefault("Content-Length", str(len(body)))
        for k, v in hdrs.items():
            self.send_header(k, str(v))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, obj: Any, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers, "application/json; charset=utf-8")

    def _send_error(self, e: HubError) -> None:
        headers = {"X-Error-Message": e.message.encode("ascii", "replace").decode()}
        if e.code:
            headers["X-Error-Code"] = e.code
        headers.update(e.headers)
        self._send_json({"error": e.message}, e.status, headers)

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body or b"{}")
        except ValueError:
            raise HubError(400, "Malformed JSON body")

    def _endpoint(self) -> str:
        return f"http://{self.headers.get('Host')}"

    # ---------------------------------------------------------------- auth
    def _token(self) -> str | None:
        """The bearer token if one was sent and is accepted; raises 401 for a rejected one."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        tokens = self.server.hub.tokens
        if scheme.lower() != "bearer" or not token or (tokens is not None and token not in tokens):
            raise HubError(401, "Invalid credentials in Authorization header")
        return token

    def _require_token(self) -> None:
        if self._token() is None:
            raise HubError(401, "You must be authenticated (Authorization: Bearer <token>) to perform this action")

    def _repo_for_read(self, repo_id: str) -> dict:
        token = self._token()
        repo = self.server.hub._repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo["private"] and token is None:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def _repo_for_write(self, repo_id: str) -> dict:
        self._require_token()
        return self._repo_for_read(repo_id)

    # ---------------------------------------------------------------- routing
    def _route(self, method: str, segs: list[str]) -> None:
        hub = self.server.hub
        if len(segs) == 3 and segs[:2] == ["__lfs__", "upload"] and method == "PUT":
            return self._lfs_put(segs[2])
        if segs and segs[0] == "api":
            return self._route_api(method, segs[1:])
        # /{repo}.git/info/lfs/objects/{batch,verify}
        if len(segs) == 6 and segs[1].endswith(".git") and segs[2:5] == ["info", "lfs", "objects"] and method == "POST":
            repo_id = f"{segs[0]}/{segs[1][: -len('.git')]}"
            if segs[5] == "batch":
                return self._lfs_batch(repo_id)
            if segs[5] == "verify":
                return self._lfs_verify(repo_id)
        # /{repo}/resolve/{rev}/{path}
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            with hub._lock:
                return self._resolve(method, "/".join(segs[:2]), segs[3], "/".join(segs[4:]))
        raise HubError(404, f"LocalHub: no route for {method} {self._rec.path}")

    def _route_api(self, method: str, segs: list[str]) -> None:
        if segs == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if segs == ["validate-yaml"] and method == "POST":
            return self._send_json({"errors": [], "warnings": []})
        if len(segs) >= 3 and segs[0] == "models":
            repo_id, tail = "/".join(segs[1:3]), segs[3:]
            with self.server.hub._lock:
                return self._route_repo_api(method, repo_id, tail)
        raise HubError(404, f"LocalHub: no API route for {method} {self._rec.path}")

    def _route_repo_api(self, method: str, repo_id: str, tail: list[str]) -> None:
        action, rev = (tail[0], tail[1] if len(tail) > 1 else "main") if tail else (None, None)
        if method == "GET" and action is None:
            return self._info(repo_id, None)
        if method == "GET" and action == "revision" and len(tail) == 2:
            return self._info(repo_id, rev)
        if method == "GET" and action == "tree" and len(tail) == 2:
            return self._tree(repo_id, rev)
        if method == "GET" and action == "commits":
            return self._list_commits(repo_id, rev)
        if method == "POST" and action == "branch" and len(tail) == 2:
            return self._create_branch(repo_id, rev)
        if method == "POST" and action == "preupload":
            return self._preupload(repo_id, rev)
        if method == "POST" and action == "commit":
            return self._commit(repo_id, rev)
        raise HubError(404, f"LocalHub: no route for {method} {self._rec.path}")

    # ---------------------------------------------------------------- repos
    def _create_repo(self) -> None:
        hub = self.server.hub
        self._require_token()
        payload = self._json_body()
        name, org = payload.get("name"), payload.get("organization")
        if not name or (payload.get("type") or "model") != "model":
            raise HubError(400, "Invalid repo name or type: LocalHub serves model repos")
        repo_id = f"{org or hub.username}/{name}"
        visibility = payload.get("visibility")
        private = visibility == "private" if visibility is not None else bool(payload.get("private", False))
        url = f"{self._endpoint()}/{repo_id}"
        with hub._lock:
            try:
                hub._create_repo(repo_id, private)
            except HubError as e:  # already exists: 409 with the repo url, like the Hub
                return self._send_json({"error": e.message, "url": url}, 409, {"X-Error-Message": e.message})
            hub._save_state()
        self._send_json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _info(self, repo_id: str, revision: str | None) -> None:
        hub = self.server.hub
        repo = self._repo_for_read(repo_id)
        blobs = self._query.get("blobs", ["false"])[-1].lower() in ("1", "true")
        self._send_json(hub._repo_info_json(repo, hub._resolve_rev(repo, revision), blobs))

    def _tree(self, repo_id: str, revision: str) -> None:
        hub = self.server.hub
        repo = self._repo_for_read(repo_id)
        tree = repo["commits"][hub._resolve_rev(repo, revision)]["tree"]
        recursive = self._query.get("recursive", ["false"])[-1].lower() in ("1", "true")
        entries = [hub._dir_json(d, tree) for d in sorted(hub._dirs_of(tree)) if recursive or "/" not in d]
        entries += [hub._file_json(p, tree[p]) for p in sorted(tree) if recursive or "/" not in p]
        self._send_json(entries)

    def _list_commits(self, repo_id: str, revision: str) -> None:
        hub = self.server.hub
        repo = self._repo_for_read(repo_id)
        out = []
        for sha in hub._history(repo, hub._resolve_rev(repo, revision)):
            c = repo["commits"][sha]
            out.append({"id": sha, "title": c["title"], "message": c["message"], "date": c["date"],
                        "authors": [{"user": a} for a in c["authors"]]})
        self._send_json(out)

    def _create_branch(self, repo_id: str, branch: str) -> None:
        hub = self.server.hub
        repo = self._repo_for_write(repo_id)
        if branch in repo["refs"]:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo["refs"][branch] = hub._resolve_rev(repo, self._json_body().get("startingPoint") or "main")
        hub._save_state()
        self._send_json({})

    # ---------------------------------------------------------------- uploads
    def _preupload(self, repo_id: str, revision: str) -> None:
        hub = self.server.hub
        repo = self._repo_for_write(repo_id)
        tree = repo["commits"][hub._resolve_rev(repo, revision)]["tree"]
        out = []
        for f in self._json_body().get("files") or []:
            path = f["path"]
            sample = base64.b64decode(f.get("sample") or "")
            mode = hub._upload_mode(repo, revision, path, int(f.get("size", 0)), sample)
            existing = tree.get(path)
            oid = None if existing is None else existing["sha256"] if existing["lfs"] else existing["git_oid"]
            out.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._send_json({"files": out, "commitOid": hub._resolve_rev(repo, revision)})

    def _lfs_batch(self, repo_id: str) -> None:
        hub = self.server.hub
        payload = self._json_body()
        if payload.get("operation") != "upload" or "basic" not in (payload.get("transfers") or ["basic"]):
            raise HubError(422, "LocalHub only supports LFS uploads with the 'basic' transfer")
        endpoint = self._endpoint()
        objects = []
        with hub._lock:
            repo = self._repo_for_write(repo_id)
            for obj in payload.get("objects", []):
                oid, size = obj["oid"], obj["size"]
                entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if oid not in repo["lfs_oids"]:  # already uploaded => no "actions": the client skips it
                    nonce = secrets.token_urlsafe(24)
                    hub._upload_nonces[nonce] = (repo_id, oid, size)
                    entry["actions"] = {
                        "upload": {"href": f"{endpoint}/__lfs__/upload/{nonce}", "header": {}},
                        "verify": {"href": f"{endpoint}/{repo_id}.git/info/lfs/objects/verify", "header": {}},
                    }
                objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, nonce: str) -> None:
        hub = self.server.hub
        with hub._lock:
            target = hub._upload_nonces.get(nonce)
        if target is None:
            raise HubError(403, "Invalid or expired upload URL")
        repo_id, oid, size = target
        data = self._body
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} / size {size} (got {len(data)} bytes)")
        with hub._lock:
            repo = hub._get_repo(repo_id)
            hub._store_blob(data, lfs=True)
            if oid not in repo["lfs_oids"]:
                repo["lfs_oids"].append(oid)
            hub.lfs_uploads.append(oid)
            hub._save_state()
        self._send(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _lfs_verify(self, repo_id: str) -> None:
        payload = self._json_body()
        with self.server.hub._lock:
            if payload.get("oid") not in self._repo_for_write(repo_id)["lfs_oids"]:
                raise HubError(404, f"LFS object {payload.get('oid')} was not uploaded")
        self._send_json({"success": True})

    def _commit(self, repo_id: str, revision: str) -> None:
        hub = self.server.hub
        repo = self._repo_for_write(repo_id)
        create_pr = self._query.get("create_pr", ["0"])[-1].lower() in ("1", "true")
        lines = [json.loads(line) for line in self._body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header" or not (lines[0].get("value") or {}).get("summary"):
            raise HubError(400, "A commit payload starts with a header that has a summary")
        header = lines[0]["value"]
        if revision not in repo["refs"]:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        branch, head = revision, repo["refs"][revision]
        tree = dict(repo["commits"][head]["tree"])
        added, lfs, deleted = [], [], []
        for item in lines[1:]:
            key, value = item.get("key"), item.get("value") or {}
            path = (value.get("path") or "").lstrip("/")
            if key == "file":
                tree[path] = hub._store_blob(base64.b64decode(value.get("content") or ""), lfs=False)
                added.append(path)
            elif key == "lfsFile":
                oid = value.get("oid")
                if oid not in repo["lfs_oids"]:
                    raise HubError(400, f"An LFS pointer points to a file that was not uploaded: {path} ({oid})")
                size = os.path.getsize(hub._blob_path(oid))
                pointer_oid = _git_blob_sha1(_lfs_pointer(oid, size))
                tree[path] = {"sha256": oid, "size": size, "lfs": True, "git_oid": pointer_oid}
                lfs.append(path)
            elif key == "deletedFile":
                if tree.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                deleted.append(path)
            else:
                raise HubError(400, f"LocalHub does not implement the commit operation {key!r}")

        endpoint = self._endpoint()
        response: dict[str, Any] = {"success": True, "hookOutput": ""}
        with hub._lock:
            if create_pr:
                num = max(repo["prs"], default=0) + 1
                ref = f"refs/pr/{num}"
                repo["refs"][ref] = head
                repo["prs"][num] = {"num": num, "ref": ref, "base": branch, "title": header["summary"],
                                    "status": "open"}
                branch = ref
                response["pullRequestUrl"] = f"{endpoint}/{repo_id}/discussions/{num}"
            sha = hub._new_commit(repo, branch, head, tree, header["summary"], header.get("description") or "",
                                  added, lfs, deleted)
            hub._save_state()
        response["commitOid"] = sha
        response["commitUrl"] = f"{endpoint}/{repo_id}/commit/{sha}"
        self._send_json(response)

    # ---------------------------------------------------------------- downloads
    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> None:
        hub = self.server.hub
        repo = self._repo_for_read(repo_id)
        sha = hub._resolve_rev(repo, revision)
        entry = repo["commits"][sha]["tree"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes",
                   "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"'}
        if entry["lfs"]:
            headers["ETag"] = f'"{entry["sha256"]}"'
            headers["X-Linked-Etag"] = f'"{entry["sha256"]}"'
            headers["X-Linked-Size"] = str(entry["size"])
        else:
            headers["ETag"] = f'"{entry["git_oid"]}"'
        if method == "HEAD":
            headers["Content-Length"] = str(entry["size"])
        body = hub._read_blob(entry["sha256"]) if method == "GET" else b""
        self._send(200, body, headers, "application/octet-stream")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the LocalHub fake Hugging Face Hub server.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", default=None, help="storage directory (kept; default: a temp dir, removed)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with LocalHub(args.root, port=args.port) as hub:
        print(hub.endpoint, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
