"""A small local stand-in for the Hugging Face Hub HTTP API, for tests.

Real ``huggingface_hub`` / ``diffusers`` upload and download code can run against it on 127.0.0.1,
because the real Hub cannot be reached from the test machines. Standard library only.

It speaks the part of the API that ``huggingface_hub`` 2.x uses when ``HF_HUB_DISABLE_XET=1`` (the
Git-LFS upload path; the Xet protocol is NOT implemented):

=======  ==============================================================  ==========================================
method   path                                                            used by
=======  ==============================================================  ==========================================
GET      /api/whoami-v2                                                  ``whoami``
GET      /api/agent-harnesses                                            user-agent registry (empty)
POST     /api/repos/create                                               ``create_repo`` (409 if it exists)
DELETE   /api/repos/delete                                               ``delete_repo``
POST     /api/validate-yaml                                              commits touching README.md
GET      /api/{type}s/{repo}                                             ``repo_info`` / ``model_info``
GET      /api/{type}s/{repo}/revision/{rev}                              ``repo_info(revision=...)``
GET      /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive=              ``list_repo_tree/files``, snapshot_download
POST     /api/{type}s/{repo}/paths-info/{rev}                            ``get_paths_info``
GET      /api/{type}s/{repo}/refs                                        ``list_repo_refs``
GET      /api/{type}s/{repo}/commits/{rev}                               ``list_repo_commits``
POST     /api/{type}s/{repo}/branch/{branch}                             ``create_branch`` (409 if it exists)
DELETE   /api/{type}s/{repo}/branch/{branch}                             ``delete_branch``
POST     /api/{type}s/{repo}/preupload/{rev}                             upload mode ("regular" / "lfs") per file
POST     /[{type}s/]{repo}.git/info/lfs/objects/batch                    LFS batch API, "basic" transfer
PUT      /__lfs__/upload/{nonce}                                         the LFS upload URL handed out by batch
POST     /[{type}s/]{repo}.git/info/lfs/objects/verify                   LFS verify action
POST     /api/{type}s/{repo}/commit/{rev}[?create_pr=1]                  ndjson commit (header/file/lfsFile/
                                                                         deletedFile/deletedFolder)
HEAD+GET /[{type}s/]{repo}/resolve/{rev}/{path}                          ``hf_hub_download`` & co (Range supported)
=======  ==============================================================  ==========================================

Behaviour worth knowing:

* Every request is appended to ``hub.requests`` (a :class:`RecordedRequest` with ``method``, ``path``
  (URL-decoded, no query), ``query``, ``headers``, ``authorization`` and the response ``status``).
  Nothing is logged or written to disk about requests, so tokens never leave memory.
* Write requests (create/delete repo, branch, preupload, LFS batch/verify, commit) need
  ``Authorization: Bearer <token>``; without one they get 401. With ``tokens=[...]`` only those tokens are
  accepted. The LFS upload URL is authorised by its unguessable nonce (the client sends no token there,
  exactly like a pre-signed S3 URL). Private repos are invisible (401 ``RepoNotFound``) without a token.
* A new repo gets an initial commit holding the default ``.gitattributes`` (as on the real Hub), so
  ``hub.files(repo)`` includes ``.gitattributes``; pass ``gitattributes=None`` to start from an empty tree.
* Upload mode: "lfs" if the file is larger than ``lfs_threshold`` (10 MiB), matches an ``filter=lfs`` pattern of
  the branch's ``.gitattributes`` or its 512-byte sample contains a NUL byte (binary); "regular" otherwise.
* Files are served directly by ``/resolve`` (no redirect): regular files with ``ETag`` = git blob sha1, LFS
  files with ``ETag``/``X-Linked-Etag`` = sha256 and ``X-Linked-Size``; always ``X-Repo-Commit``.
* Every commit gets a new 40-hex sha; each branch / ``refs/pr/N`` keeps its history (``hub.commits``).

Usage::

    with LocalHub() as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_test")   # with HF_HUB_DISABLE_XET=1 (env or constants)
        ...
        assert hub.files("user/repo")["config.json"] == b"..."

Standalone: ``python tests/hub_server.py --port 0 --root DIR`` prints the endpoint on stdout, then serves until
SIGINT/SIGTERM. State is persisted under ``root`` (``state.json`` + ``blobs/``) and reloaded on start.
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
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["LocalHub", "RecordedRequest", "HubError", "DEFAULT_GITATTRIBUTES"]

# The `.gitattributes` the Hub puts in every new model repo (abridged to the usual weight formats).
DEFAULT_GITATTRIBUTES = """\
*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bz2 filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.ftz filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.joblib filter=lfs diff=lfs merge=lfs -text
*.lfs.* filter=lfs diff=lfs merge=lfs -text
*.mlmodel filter=lfs diff=lfs merge=lfs -text
*.model filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.ot filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pb filter=lfs diff=lfs merge=lfs -text
*.pickle filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.rar filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
saved_model/**/* filter=lfs diff=lfs merge=lfs -text
*.tar.* filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.tflite filter=lfs diff=lfs merge=lfs -text
*.tgz filter=lfs diff=lfs merge=lfs -text
*.wasm filter=lfs diff=lfs merge=lfs -text
*.xz filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
"""

REPO_TYPES = ("model", "dataset", "space")
_TYPE_PREFIXES = {"datasets": "dataset", "spaces": "space"}  # URL prefix of non-model repos (resolve, .git)
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
_PR_REF_RE = re.compile(r"^refs/pr/(\d+)$")
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

    @property
    def has_token(self) -> bool:
        return bool(self.authorization) and self.authorization.lower().startswith("bearer ")

    def json(self) -> Any:
        return json.loads(self.body or b"null")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _gitattributes_lfs_patterns(content: str) -> list[str]:
    patterns = []
    for line in content.splitlines():
        parts = line.strip().split()
        if parts and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _match_git_pattern(path: str, pattern: str) -> bool:
    """Approximate gitattributes/gitignore matching: a pattern without '/' matches the basename anywhere."""
    pattern = pattern.strip()
    if not pattern:
        return False
    if pattern.endswith("/"):
        prefix = pattern.strip("/")
        return path == prefix or path.startswith(prefix + "/") or ("/" + prefix + "/") in ("/" + path)
    if "/" not in pattern.strip("/"):
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern) or fnmatch.fnmatchcase(path, pattern)
    return fnmatch.fnmatchcase(path, pattern.lstrip("/")) or fnmatch.fnmatchcase(path, pattern.replace("**/", ""))


class LocalHub:
    """In-process fake Hub server; see the module docstring. Use as a context manager."""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "test-user",
        tokens: list[str] | None = None,
        lfs_threshold: int = 10 * 1024 * 1024,
        lfs_verify: bool = True,
        gitattributes: str | None = DEFAULT_GITATTRIBUTES,
    ):
        self._own_root = root is None
        self.root = str(root) if root is not None else tempfile.mkdtemp(prefix="local-hub-")
        os.makedirs(os.path.join(self.root, "blobs"), exist_ok=True)
        self.host = host
        self.port = port
        self.username = username
        self.tokens = set(tokens) if tokens is not None else None
        self.lfs_threshold = lfs_threshold
        self.lfs_verify = lfs_verify
        self.gitattributes = gitattributes

        self.requests: list[RecordedRequest] = []
        self.lfs_uploads: list[str] = []  # sha256 of every object received through the LFS upload URL
        self._lock = threading.RLock()
        self._repos: dict[str, dict] = {}  # key "type:repo_id"
        self._upload_nonces: dict[str, tuple[str, str, int]] = {}  # nonce -> (repo key, oid, size)
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._load_state()

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("LocalHub is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> "LocalHub":
        if self._server is not None:
            return self
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
            if self._thread is not None:
                self._thread.join(timeout=5)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
            self._own_root = False

    close = stop

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
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper()) and (contains is None or contains in r.path)
            ]

    @property
    def authorizations(self) -> list[str | None]:
        """The Authorization header of every request, in order (None when absent)."""
        with self._lock:
            return [r.authorization for r in self.requests]

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return self._key(repo_type, repo_id) in self._repos

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return bool(self._get_repo(repo_type, repo_id)["private"])

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """Commit sha that ``revision`` (branch, ``refs/pr/N`` or sha) points to."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            return self._resolve_rev(repo, revision)

    def refs(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        """All refs of a repo: ``{"main": sha, "refs/pr/1": sha, ...}``."""
        with self._lock:
            return dict(self._get_repo(repo_type, repo_id)["refs"])

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """``{path: content}`` of the tree at ``revision`` (includes ``.gitattributes`` when present)."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            tree = repo["commits"][self._resolve_rev(repo, revision)]["tree"]
            return {path: self._read_blob(entry["sha256"]) for path, entry in sorted(tree.items())}

    def tree(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, dict]:
        """``{path: {"sha256", "size", "lfs", "git_oid"}}`` at ``revision``."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            return copy.deepcopy(repo["commits"][self._resolve_rev(repo, revision)]["tree"])

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[dict]:
        """History of ``revision``, newest first. Each commit: ``id``, ``parents``, ``title``, ``message``,
        ``date``, ``added`` (paths sent inline), ``lfs`` (paths sent as LFS pointers), ``deleted``."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            out = []
            for sha in self._history(repo, self._resolve_rev(repo, revision)):
                c = repo["commits"][sha]
                out.append({k: copy.deepcopy(v) for k, v in c.items() if k != "tree"})
            return out

    def pull_requests(self, repo_id: str, repo_type: str = "model") -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(self._get_repo(repo_type, repo_id)["prs"].values()))

    def create_repo(self, repo_id: str, *, private: bool = False, repo_type: str = "model") -> None:
        """Create a repo directly (no HTTP), e.g. to seed a test."""
        with self._lock:
            self._create_repo(repo_type, repo_id, private)
            self._save_state()

    def commit_files(
        self,
        repo_id: str,
        files: dict[str, bytes | str],
        *,
        revision: str = "main",
        message: str = "seed",
        repo_type: str = "model",
        delete: list[str] = (),
    ) -> str:
        """Commit ``files`` directly (no HTTP), creating the repo if needed. Returns the new commit sha."""
        with self._lock:
            if self._key(repo_type, repo_id) not in self._repos:
                self._create_repo(repo_type, repo_id, False)
            repo = self._get_repo(repo_type, repo_id)
            parent = self._resolve_rev(repo, revision)
            tree = dict(repo["commits"][parent]["tree"])
            added, lfs = [], []
            for path, content in files.items():
                data = content.encode() if isinstance(content, str) else bytes(content)
                is_lfs = self._upload_mode(repo, revision, path, len(data), data[:512]) == "lfs"
                tree[path] = self._store_blob(data, lfs=is_lfs)
                (lfs if is_lfs else added).append(path)
            for path in delete:
                tree.pop(path, None)
            sha = self._new_commit(repo, revision, parent, tree, message, "", added, lfs, list(delete))
            self._save_state()
            return sha

    # ------------------------------------------------------------------ storage
    @staticmethod
    def _key(repo_type: str, repo_id: str) -> str:
        return f"{repo_type}:{repo_id}"

    def _get_repo(self, repo_type: str, repo_id: str) -> dict:
        repo = self._repos.get(self._key(repo_type, repo_id))
        if repo is None:
            raise KeyError(f"No {repo_type} repo {repo_id!r} on the local hub")
        return repo

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
        path = self._state_path()
        if os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
            self._repos = state["repos"]
            self._counter = state["counter"]
            for repo in self._repos.values():  # JSON turned int keys into str
                repo["prs"] = {int(k): v for k, v in repo["prs"].items()}

    def _save_state(self) -> None:
        path = self._state_path()
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"repos": self._repos, "counter": self._counter}, f)
        os.replace(tmp, path)

    def _create_repo(self, repo_type: str, repo_id: str, private: bool) -> dict:
        key = self._key(repo_type, repo_id)
        if key in self._repos:
            raise HubError(409, f"You already created this {repo_type} repo", headers={"X-Error-Code": "RepoExists"})
        now = _now()
        repo = {
            "type": repo_type,
            "id": repo_id,
            "private": bool(private),
            "created_at": now,
            "refs": {},
            "commits": {},
            "prs": {},
            "lfs_oids": [],
        }
        self._repos[key] = repo
        tree = {}
        if self.gitattributes is not None:
            tree[".gitattributes"] = self._store_blob(self.gitattributes.encode(), lfs=False)
        self._new_commit(repo, "main", None, tree, "initial commit", "", sorted(tree), [], [])
        return repo

    def _new_commit(self, repo, ref, parent, tree, title, message, added, lfs, deleted) -> str:
        self._counter += 1
        payload = json.dumps(
            [repo["type"], repo["id"], ref, parent, title, message, self._counter, time.time_ns(),
             sorted((p, e["git_oid"]) for p, e in tree.items())]
        ).encode()
        sha = hashlib.sha1(payload).hexdigest()
        repo["commits"][sha] = {
            "id": sha,
            "parents": [parent] if parent else [],
            "title": title,
            "message": message,
            "date": _now(),
            "authors": [self.username],
            "added": list(added),
            "lfs": list(lfs),
            "deleted": list(deleted),
            "tree": tree,
        }
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
        if rev.startswith("refs/heads/"):
            rev = rev[len("refs/heads/") :]
        if rev in repo["refs"]:
            return repo["refs"][rev]
        if _SHA1_RE.match(rev) and rev in repo["commits"]:
            return rev
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _branch_for_write(self, repo: dict, revision: str) -> str:
        rev = revision[len("refs/heads/") :] if revision.startswith("refs/heads/") else revision
        if rev not in repo["refs"]:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return rev

    def _upload_mode(self, repo: dict, revision: str, path: str, size: int, sample: bytes) -> str:
        if size > self.lfs_threshold or b"\x00" in sample:
            return "lfs"
        try:
            tree = repo["commits"][self._resolve_rev(repo, revision)]["tree"]
        except HubError:
            tree = {}
        attrs = tree.get(".gitattributes")
        if attrs is not None:
            patterns = _gitattributes_lfs_patterns(self._read_blob(attrs["sha256"]).decode("utf-8", "replace"))
            if any(_match_git_pattern(path, p) for p in patterns):
                return "lfs"
        return "regular"

    # ------------------------------------------------------------------ JSON shapes
    def _endpoint_for(self, handler) -> str:
        host = handler.headers.get("Host")
        return f"http://{host}" if host else self.endpoint

    @staticmethod
    def _url_prefix(repo_type: str) -> str:
        return "" if repo_type == "model" else f"{repo_type}s/"

    @staticmethod
    def _file_json(path: str, entry: dict) -> dict:
        out = {"type": "file", "oid": entry["git_oid"], "size": entry["size"], "path": path}
        if entry["lfs"]:
            out["lfs"] = {
                "oid": entry["sha256"],
                "size": entry["size"],
                "pointerSize": len(_lfs_pointer(entry["sha256"], entry["size"])),
            }
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
                    s["lfs"] = {
                        "size": entry["size"],
                        "sha256": entry["sha256"],
                        "pointerSize": len(_lfs_pointer(entry["sha256"], entry["size"])),
                    }
            siblings.append(s)
        author = repo["id"].split("/")[0] if "/" in repo["id"] else self.username
        return {
            "_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24],
            "id": repo["id"],
            "modelId": repo["id"],
            "author": author,
            "sha": sha,
            "lastModified": commit["date"],
            "createdAt": repo["created_at"],
            "private": repo["private"],
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "spaces": [],
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

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        body = self._read_body()
        rec = RecordedRequest(
            method=method,
            path=unquote(split.path),
            raw_path=self.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k: v for k, v in self.headers.items()},
            authorization=self.headers.get("Authorization"),
            body=body if len(body) <= _MAX_RECORDED_BODY else None,
            body_size=len(body),
        )
        with hub._lock:
            hub.requests.append(rec)
        self._rec = rec
        self._body = body
        self._query = rec.query
        try:
            self._route(method, split.path)
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

    # ---------------------------------------------------------------- auth
    def _token(self) -> str | None:
        """The bearer token if one was sent and is accepted; raises 401 for a rejected one."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        hub = self.server.hub
        if scheme.lower() != "bearer" or not token or (hub.tokens is not None and token not in hub.tokens):
            raise HubError(401, "Invalid credentials in Authorization header")
        return token

    def _require_token(self) -> str:
        token = self._token()
        if token is None:
            raise HubError(401, "You must be authenticated (Authorization: Bearer <token>) to perform this action")
        return token

    def _repo_for_read(self, repo_type: str, repo_id: str) -> dict:
        hub = self.server.hub
        token = self._token()
        repo = hub._repos.get(hub._key(repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo["private"] and token is None:
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def _repo_for_write(self, repo_type: str, repo_id: str) -> dict:
        self._require_token()
        return self._repo_for_read(repo_type, repo_id)

    # ---------------------------------------------------------------- routing
    def _route(self, method: str, raw_path: str) -> None:
        hub = self.server.hub
        segs = [unquote(s) for s in raw_path.split("/")[1:]]
        if segs and segs[-1] == "" and len(segs) > 1:
            segs = segs[:-1]

        if len(segs) == 3 and segs[:2] == ["__lfs__", "upload"] and method == "PUT":
            return self._lfs_put(segs[2])
        if segs and segs[0] == "api":
            return self._route_api(method, segs[1:])

        # /[{type}s/]{repo}.git/info/lfs/objects/{batch,verify}
        for i, s in enumerate(segs):
            if s.endswith(".git") and segs[i + 1 : i + 4] == ["info", "lfs", "objects"] and len(segs) == i + 5:
                repo_type, repo_parts = self._split_type_prefix(segs[:i] + [s[: -len(".git")]])
                repo_id = "/".join(repo_parts)
                if method == "POST" and segs[i + 4] == "batch":
                    return self._lfs_batch(repo_type, repo_id)
                if method == "POST" and segs[i + 4] == "verify":
                    return self._lfs_verify(repo_type, repo_id)
                break

        # /[{type}s/]{repo}/resolve/{rev}/{path}
        if "resolve" in segs and method in ("GET", "HEAD"):
            i = segs.index("resolve")
            repo_type, repo_parts = self._split_type_prefix(segs[:i])
            rest = segs[i + 1 :]
            if repo_parts and len(rest) >= 2:
                rev, path_parts = rest[0], rest[1:]
                if rev == "refs" and len(rest) >= 4:  # unquoted "refs/pr/1" or "refs/heads/x"
                    rev, path_parts = "/".join(rest[:3]), rest[3:]
                with hub._lock:
                    return self._resolve(method, repo_type, "/".join(repo_parts), rev, "/".join(path_parts))
        raise HubError(404, f"LocalHub: no route for {method} {raw_path}")

    @staticmethod
    def _split_type_prefix(parts: list[str]) -> tuple[str, list[str]]:
        if len(parts) >= 2 and parts[0] in _TYPE_PREFIXES:
            return _TYPE_PREFIXES[parts[0]], parts[1:]
        return "model", parts

    def _route_api(self, method: str, segs: list[str]) -> None:
        hub = self.server.hub
        if segs == ["whoami-v2"] and method == "GET":
            self._require_token()
            return self._send_json(
                {
                    "type": "user",
                    "id": hashlib.sha1(hub.username.encode()).hexdigest()[:24],
                    "name": hub.username,
                    "fullname": hub.username,
                    "isPro": False,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "local-hub", "role": "write"}},
                }
            )
        if segs == ["agent-harnesses"] and method == "GET":  # user-agent detection registry, fetched on import
            return self._send_json({"standardEnvVars": [], "harnesses": {}})
        if segs == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if segs == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo()
        if segs == ["validate-yaml"] and method == "POST":
            return self._send_json({"errors": [], "warnings": []})
        if len(segs) >= 2 and segs[0] in ("models", "datasets", "spaces"):
            repo_type = segs[0][:-1]
            rest = segs[1:]
            with hub._lock:
                # Repo ids are "namespace/name"; a single-segment id is accepted when such a repo exists.
                if len(rest) >= 2 and hub._key(repo_type, "/".join(rest[:2])) in hub._repos:
                    repo_id, tail = "/".join(rest[:2]), rest[2:]
                elif hub._key(repo_type, rest[0]) in hub._repos:
                    repo_id, tail = rest[0], rest[1:]
                else:
                    repo_id, tail = "/".join(rest[:2]), rest[2:]
                return self._route_repo_api(method, repo_type, repo_id, tail)
        raise HubError(404, f"LocalHub: no API route for {method} /api/{'/'.join(segs)}")

    def _route_repo_api(self, method: str, repo_type: str, repo_id: str, tail: list[str]) -> None:
        # A revision is a single (URL-quoted) segment; accept an unquoted "refs/pr/N" too.
        def rev_and_rest(parts: list[str]) -> tuple[str, list[str]]:
            if parts and parts[0] == "refs" and len(parts) >= 3:
                return "/".join(parts[:3]), parts[3:]
            return (parts[0], parts[1:]) if parts else ("main", [])

        if not tail and method == "GET":
            return self._info(repo_type, repo_id, None)
        action = tail[0]
        if action == "revision" and method == "GET" and len(tail) >= 2:
            rev, _ = rev_and_rest(tail[1:])
            return self._info(repo_type, repo_id, rev)
        if action == "tree" and method == "GET":
            rev, rest = rev_and_rest(tail[1:])
            return self._tree(repo_type, repo_id, rev, "/".join(rest))
        if action == "paths-info" and method == "POST":
            rev, _ = rev_and_rest(tail[1:])
            return self._paths_info(repo_type, repo_id, rev)
        if action == "refs" and method == "GET":
            return self._refs(repo_type, repo_id)
        if action == "commits" and method == "GET":
            rev, _ = rev_and_rest(tail[1:])
            return self._list_commits(repo_type, repo_id, rev)
        if action == "branch" and len(tail) >= 2 and method in ("POST", "DELETE"):
            return self._branch(method, repo_type, repo_id, "/".join(tail[1:]))
        if action == "preupload" and method == "POST":
            rev, _ = rev_and_rest(tail[1:])
            return self._preupload(repo_type, repo_id, rev)
        if action == "commit" and method == "POST":
            rev, _ = rev_and_rest(tail[1:])
            return self._commit(repo_type, repo_id, rev)
        raise HubError(404, f"LocalHub: no route for {method} {self._rec.path}")

    # ---------------------------------------------------------------- repos
    def _json_body(self) -> Any:
        try:
            return json.loads(self._body or b"{}")
        except ValueError:
            raise HubError(400, "Malformed JSON body")

    def _create_repo(self) -> None:
        hub = self.server.hub
        self._require_token()
        payload = self._json_body()
        name, org = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        if not name or repo_type not in REPO_TYPES:
            raise HubError(400, "Invalid repo name or type")
        repo_id = f"{org or hub.username}/{name}"
        visibility = payload.get("visibility")
        private = visibility == "private" if visibility is not None else bool(payload.get("private", False))
        url = f"{self._endpoint()}/{hub._url_prefix(repo_type)}{repo_id}"
        with hub._lock:
            try:
                hub._create_repo(repo_type, repo_id, private)
            except HubError as e:  # already exists: 409 with the repo url, like the Hub
                return self._send_json({"error": e.message, "url": url}, 409, {"X-Error-Message": e.message})
            hub._save_state()
        self._send_json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _delete_repo(self) -> None:
        hub = self.server.hub
        self._require_token()
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or hub.username}/{payload.get('name')}"
        with hub._lock:
            self._repo_for_write(repo_type, repo_id)
            del hub._repos[hub._key(repo_type, repo_id)]
            hub._save_state()
        self._send_json({})

    def _endpoint(self) -> str:
        return self.server.hub._endpoint_for(self)

    def _info(self, repo_type: str, repo_id: str, revision: str | None) -> None:
        hub = self.server.hub
        repo = self._repo_for_read(repo_type, repo_id)
        sha = hub._resolve_rev(repo, revision)
        blobs = self._query.get("blobs", ["false"])[-1].lower() in ("1", "true")
        self._send_json(hub._repo_info_json(repo, sha, blobs))

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        hub = self.server.hub
        repo = self._repo_for_read(repo_type, repo_id)
        tree = repo["commits"][hub._resolve_rev(repo, revision)]["tree"]
        recursive = self._query.get("recursive", ["false"])[-1].lower() in ("1", "true")
        path = path.strip("/")
        dirs = hub._dirs_of(tree)
        if path and path not in dirs:
            raise HubError(404, f"File not found: {path}", "EntryNotFound")
        prefix = path + "/" if path else ""
        entries = []
        for d in sorted(dirs):
            if d.startswith(prefix) and (recursive or "/" not in d[len(prefix) :]):
                entries.append(hub._dir_json(d, tree))
        for p in sorted(tree):
            if p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :]):
                entries.append(hub._file_json(p, tree[p]))
        self._send_json(entries)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.server.hub
        repo = self._repo_for_read(repo_type, repo_id)
        tree = repo["commits"][hub._resolve_rev(repo, revision)]["tree"]
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = self._json_body().get("paths", [])
        else:
            paths = parse_qs(self._body.decode(), keep_blank_values=True).get("paths", [])
        dirs = hub._dirs_of(tree)
        out = []
        for p in paths:
            p = p.strip("/")
            if p in tree:
                out.append(hub._file_json(p, tree[p]))
            elif p in dirs:
                out.append(hub._dir_json(p, tree))
        self._send_json(out)

    def _refs(self, repo_type: str, repo_id: str) -> None:
        repo = self._repo_for_read(repo_type, repo_id)
        branches, prs = [], []
        for name, sha in sorted(repo["refs"].items()):
            if _PR_REF_RE.match(name):
                prs.append({"name": name, "ref": name, "targetCommit": sha})
            else:
                branches.append({"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha})
        out: dict[str, Any] = {"branches": branches, "converts": [], "tags": []}
        if self._query.get("include_prs"):
            out["pullRequests"] = prs
        self._send_json(out)

    def _list_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.server.hub
        repo = self._repo_for_read(repo_type, repo_id)
        out = []
        for sha in hub._history(repo, hub._resolve_rev(repo, revision)):
            c = repo["commits"][sha]
            out.append(
                {
                    "id": sha,
                    "title": c["title"],
                    "message": c["message"],
                    "date": c["date"],
                    "authors": [{"user": a} for a in c["authors"]],
                }
            )
        self._send_json(out)

    def _branch(self, method: str, repo_type: str, repo_id: str, branch: str) -> None:
        hub = self.server.hub
        repo = self._repo_for_write(repo_type, repo_id)
        if method == "DELETE":
            if branch == "main":
                raise HubError(403, "Cannot delete the default branch")
            if branch not in repo["refs"]:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            del repo["refs"][branch]
        else:
            if branch in repo["refs"]:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = self._json_body().get("startingPoint") or "main"
            repo["refs"][branch] = hub._resolve_rev(repo, start)
        hub._save_state()
        self._send_json({})

    # ---------------------------------------------------------------- uploads
    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.server.hub
        repo = self._repo_for_write(repo_type, repo_id)
        hub._resolve_rev(repo, revision)  # 404 RevisionNotFound on an unknown revision
        payload = self._json_body()
        files = payload.get("files")
        if not isinstance(files, list):
            raise HubError(400, "Malformed preupload payload: 'files' must be a list")
        tree = repo["commits"][hub._resolve_rev(repo, revision)]["tree"]
        gitignore = payload.get("gitIgnore")
        if gitignore is None and ".gitignore" in tree:
            gitignore = hub._read_blob(tree[".gitignore"]["sha256"]).decode("utf-8", "replace")
        ignore_patterns = [
            line.strip() for line in (gitignore or "").splitlines() if line.strip() and not line.startswith("#")
        ]
        out = []
        for f in files:
            path = f["path"]
            sample = base64.b64decode(f.get("sample") or "")
            mode = hub._upload_mode(repo, revision, path, int(f.get("size", 0)), sample)
            existing = tree.get(path)
            oid = None
            if existing is not None:
                oid = existing["sha256"] if existing["lfs"] else existing["git_oid"]
            out.append(
                {
                    "path": path,
                    "uploadMode": mode,
                    "shouldIgnore": any(_match_git_pattern(path, p) for p in ignore_patterns),
                    "oid": oid,
                }
            )
        self._send_json({"files": out, "commitOid": hub._resolve_rev(repo, revision)})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        hub = self.server.hub
        payload = self._json_body()
        operation = payload.get("operation")
        with hub._lock:
            repo = self._repo_for_write(repo_type, repo_id) if operation == "upload" else self._repo_for_read(
                repo_type, repo_id
            )
            transfers = payload.get("transfers") or ["basic"]
            if "basic" not in transfers:
                raise HubError(422, "LocalHub only supports the 'basic' LFS transfer")
            endpoint = self._endpoint()
            prefix = hub._url_prefix(repo_type)
            objects = []
            for obj in payload.get("objects", []):
                oid, size = obj.get("oid"), obj.get("size")
                if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int):
                    objects.append({"oid": str(oid), "size": int(size or 0), "error": {"code": 422, "message": "Invalid object"}})
                    continue
                entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if operation == "upload":
                    if oid not in repo["lfs_oids"]:  # already uploaded => no "actions": the client skips it
                        nonce = secrets.token_urlsafe(24)
                        hub._upload_nonces[nonce] = (hub._key(repo_type, repo_id), oid, size)
                        actions = {"upload": {"href": f"{endpoint}/__lfs__/upload/{nonce}", "header": {}}}
                        if hub.lfs_verify:
                            actions["verify"] = {
                                "href": f"{endpoint}/{prefix}{repo_id}.git/info/lfs/objects/verify",
                                "header": {},
                            }
                        entry["actions"] = actions
                elif operation == "download":
                    if oid not in repo["lfs_oids"]:
                        entry["error"] = {"code": 404, "message": "Object does not exist"}
                    else:
                        entry["actions"] = {"download": {"href": self._lfs_download_href(repo, oid), "header": {}}}
                else:
                    raise HubError(422, f"Unknown LFS operation {operation!r}")
                objects.append(entry)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_download_href(self, repo: dict, oid: str) -> str:
        hub = self.server.hub
        for sha in hub._history(repo, repo["refs"]["main"]):
            for path, e in repo["commits"][sha]["tree"].items():
                if e["sha256"] == oid:
                    return f"{self._endpoint()}/{hub._url_prefix(repo['type'])}{repo['id']}/resolve/{sha}/{quote(path)}"
        return ""

    def _lfs_put(self, nonce: str) -> None:
        hub = self.server.hub
        with hub._lock:
            target = hub._upload_nonces.get(nonce)
        if target is None:
            raise HubError(403, "Invalid or expired upload URL")
        key, oid, size = target
        data = self._body
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} / size {size} (got {len(data)} bytes)")
        with hub._lock:
            repo = hub._repos.get(key)
            if repo is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
            hub._store_blob(data, lfs=True)
            if oid not in repo["lfs_oids"]:
                repo["lfs_oids"].append(oid)
            hub.lfs_uploads.append(oid)
            hub._save_state()
        self._send(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _lfs_verify(self, repo_type: str, repo_id: str) -> None:
        hub = self.server.hub
        payload = self._json_body()
        with hub._lock:
            repo = self._repo_for_write(repo_type, repo_id)
            oid, size = payload.get("oid"), payload.get("size")
            if oid not in repo["lfs_oids"]:
                raise HubError(404, f"LFS object {oid} was not uploaded")
            if os.path.getsize(hub._blob_path(oid)) != size:
                raise HubError(422, f"LFS object {oid} has a different size")
        self._send_json({"success": True})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.server.hub
        repo = self._repo_for_write(repo_type, repo_id)
        create_pr = self._query.get("create_pr", ["0"])[-1].lower() in ("1", "true")
        try:
            lines = [json.loads(line) for line in self._body.decode().splitlines() if line.strip()]
        except ValueError:
            raise HubError(400, "Malformed ndjson commit payload")
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit payload must be its header")
        header = lines[0].get("value") or {}
        title = header.get("summary") or ""
        if not title:
            raise HubError(400, "Commit summary is required")
        description = header.get("description") or ""

        branch = hub._branch_for_write(repo, revision)
        head = repo["refs"][branch]
        parent_commit = header.get("parentCommit")
        if parent_commit and parent_commit != head:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")

        tree = dict(repo["commits"][head]["tree"])
        added, lfs, deleted = [], [], []
        for item in lines[1:]:
            key, value = item.get("key"), item.get("value") or {}
            path = (value.get("path") or "").lstrip("/")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding for {path}")
                data = base64.b64decode(value.get("content") or "")
                tree[path] = hub._store_blob(data, lfs=False)
                added.append(path)
            elif key == "lfsFile":
                oid = value.get("oid")
                if oid not in repo["lfs_oids"]:
                    raise HubError(
                        400,
                        f"Your push was rejected because an LFS pointer pointed to a file that does not exist: {path} ({oid})",
                    )
                data_size = os.path.getsize(hub._blob_path(oid))
                if value.get("size") is not None and value["size"] != data_size:
                    raise HubError(400, f"LFS file {path}: size mismatch")
                tree[path] = {
                    "sha256": oid,
                    "size": data_size,
                    "lfs": True,
                    "git_oid": _git_blob_sha1(_lfs_pointer(oid, data_size)),
                }
                lfs.append(path)
            elif key == "deletedFile":
                if path not in tree:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del tree[path]
                deleted.append(path)
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                gone = [p for p in tree if p.startswith(prefix)]
                if not gone:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in gone:
                    del tree[p]
                deleted.extend(gone)
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")

        endpoint = self._endpoint()
        prefix = hub._url_prefix(repo_type)
        response: dict[str, Any] = {"success": True, "hookOutput": ""}
        with hub._lock:
            if create_pr:
                num = max(repo["prs"], default=0) + 1
                ref = f"refs/pr/{num}"
                repo["refs"][ref] = head
                repo["prs"][num] = {"num": num, "ref": ref, "base": branch, "title": title, "status": "open"}
                branch = ref
                response["pullRequestUrl"] = f"{endpoint}/{prefix}{repo_id}/discussions/{num}"
            sha = hub._new_commit(repo, branch, head, tree, title, description, added, lfs, deleted)
            hub._save_state()
        response["commitOid"] = sha
        response["commitUrl"] = f"{endpoint}/{prefix}{repo_id}/commit/{sha}"
        self._send_json(response)

    # ---------------------------------------------------------------- downloads
    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        hub = self.server.hub
        repo = self._repo_for_read(repo_type, repo_id)
        sha = hub._resolve_rev(repo, revision)
        entry = repo["commits"][sha]["tree"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": sha})
        headers = {
            "X-Repo-Commit": sha,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        if entry["lfs"]:
            headers["ETag"] = f'"{entry["sha256"]}"'
            headers["X-Linked-Etag"] = f'"{entry["sha256"]}"'
            headers["X-Linked-Size"] = str(entry["size"])
        else:
            headers["ETag"] = f'"{entry["git_oid"]}"'
        data = hub._read_blob(entry["sha256"]) if method == "GET" else b""
        size = entry["size"]
        status = 200
        rng = self.headers.get("Range")
        if rng and method == "GET":
            m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", rng)
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:
                    start, end = max(size - int(m.group(2)), 0), size - 1
                if start >= size or start > end:
                    raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
                data = data[start : end + 1]
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                status = 206
        if method == "HEAD":
            headers["Content-Length"] = str(size)
        self._send(status, data, headers, "application/octet-stream")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the LocalHub fake Hugging Face Hub server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", default=None, help="storage directory (kept; default: a temp dir, removed)")
    parser.add_argument("--username", default="test-user")
    parser.add_argument("--token", action="append", default=None, help="accepted token (repeatable); default any")
    args = parser.parse_args(argv)

    hub = LocalHub(args.root, host=args.host, port=args.port, username=args.username, tokens=args.token)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with hub:
        print(hub.endpoint, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
