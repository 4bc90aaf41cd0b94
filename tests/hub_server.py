"""A local HTTP server that speaks enough of the Hugging Face Hub API for the real `huggingface_hub` client.

Covered (model and dataset repos): `HfApi.create_repo`, `upload_folder` / `upload_file` (README front-matter
validation, preupload + NDJSON commit, every file sent inline as "regular"), `repo_info`, `list_repo_tree`, and `hf_hub_download` /
`snapshot_download` (`resolve/{revision}/{path}` with `X-Repo-Commit` and `ETag`). Point the client at it
with `HF_ENDPOINT=<server.url>` (or `endpoint=`) and `HF_HUB_DISABLE_XET=1`.

It listens on 127.0.0.1 only, keeps repos in memory, refuses request bodies above `max_body_bytes`, and
shuts itself down after `lifetime_s` seconds even if a test forgets to stop it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = ("model", "dataset")
_API_ROUTE = re.compile(
    r"^/api/(?P<type>models|datasets)/(?P<repo>[^/]+/[^/]+)"
    r"(?:/(?P<action>revision|tree|preupload|commit)/(?P<rev>[^/]+)(?P<path>/.*)?)?$"
)
_RESOLVE_ROUTE = re.compile(r"^/(?:(?P<type>datasets)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def git_blob_sha(content: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's `oid` / ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    sha: str
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    commits: list[Commit] = field(default_factory=list)

    def at(self, revision: str) -> Commit | None:
        """The commit a branch name ("main") or a commit sha points to; None if there is none."""
        if revision == "main":
            return self.commits[-1] if self.commits else None
        return next((c for c in self.commits if c.sha == revision), None)


class HubError(Exception):
    def __init__(self, status: HTTPStatus, code: str, message: str, **details):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


class LocalHub:
    """In-memory repos keyed by (repo_type, repo_id); thread-safe."""

    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lock = threading.Lock()

    def create(self, repo_type: str, repo_id: str, url: str) -> Repo:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(HTTPStatus.CONFLICT, "RepoExists", f"You already created this {repo_type} repo", url=url)
            repo = Repo(repo_type, repo_id)
            initial = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
            repo.commits.append(Commit(self._sha(repo_id, 0, initial), "initial commit", initial))
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def get(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(HTTPStatus.NOT_FOUND, "RepoNotFound", f"Repository not found: {repo_type} {repo_id}")
        return repo

    def commit_at(self, repo_type: str, repo_id: str, revision: str) -> Commit:
        commit = self.get(repo_type, repo_id).at(revision)
        if commit is None:
            raise HubError(HTTPStatus.NOT_FOUND, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def apply_commit(self, repo_type: str, repo_id: str, revision: str, ndjson: bytes) -> Commit:
        """Apply an NDJSON commit payload (header, file, deletedFile, deletedFolder lines) on top of `revision`."""
        with self.lock:
            repo = self.get(repo_type, repo_id)
            files = dict(self.commit_at(repo_type, repo_id, revision).files)
            message = ""
            for line in ndjson.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    message = value.get("summary", "")
                elif key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(HTTPStatus.BAD_REQUEST, "BadRequest", f"unsupported encoding for {value['path']}")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: c for p, c in files.items() if not p.startswith(prefix)}
                else:
                    raise HubError(HTTPStatus.BAD_REQUEST, "BadRequest", f"this local hub does not support '{key}'")
            commit = Commit(self._sha(repo_id, len(repo.commits), files), message, files)
            repo.commits.append(commit)
            return commit

    @staticmethod
    def _sha(repo_id: str, index: int, files: dict[str, bytes]) -> str:
        digest = hashlib.sha1(f"{repo_id}:{index}".encode())
        for path in sorted(files):
            digest.update(path.encode() + git_blob_sha(files[path]).encode())
        return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server: "LocalHubServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self):
        self._dispatch(send_body=True)

    def do_HEAD(self):
        self._dispatch(send_body=False)

    def do_POST(self):
        self._dispatch(send_body=True)

    def _dispatch(self, send_body: bool):
        url = urlsplit(self.path)
        try:
            body = self._read_body()
            if url.path == "/api/repos/create" and self.command == "POST":
                return self._create_repo(json.loads(body or b"{}"))
            if url.path == "/api/validate-yaml" and self.command == "POST":
                return self._validate_yaml(json.loads(body)["content"])
            match = _API_ROUTE.match(url.path)
            if match:
                return self._api(match, parse_qs(url.query), body)
            match = _RESOLVE_ROUTE.match(url.path)
            if match and self.command in ("GET", "HEAD"):
                return self._resolve(match, send_body)
            raise HubError(HTTPStatus.NOT_FOUND, "NotFound", f"{self.command} {url.path} is not served here")
        except HubError as error:
            self._send_json({"error": error.message, **error.details}, error.status, {"X-Error-Code": error.code}, send_body)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.server.max_body_bytes:
            raise HubError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "TooLarge", f"body of {length} bytes is over the limit")
        return self.rfile.read(length) if length else b""

    def _create_repo(self, payload: dict):
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(HTTPStatus.BAD_REQUEST, "BadRequest", f"repo type {repo_type!r} is not served here")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if "/" not in repo_id:
            repo_id = f"user/{repo_id}"
        url = self.server.repo_url(repo_type, repo_id)
        self.server.hub.create(repo_type, repo_id, url)
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, readme: str):
        """Check that a README's front matter (between the leading `---` lines) is a YAML mapping, as the Hub does."""
        errors = []
        if readme.startswith("---"):
            front_matter = readme.split("---", 2)[1] if readme.count("---") >= 2 else None
            try:
                if front_matter is None or not isinstance(yaml.safe_load(front_matter) or {}, dict):
                    errors.append({"message": "the README front matter is not a YAML mapping"})
            except yaml.YAMLError as error:
                errors.append({"message": f"invalid YAML in the README front matter: {error}"})
        status = HTTPStatus.BAD_REQUEST if errors else HTTPStatus.OK
        self._send_json({"errors": errors, "warnings": []}, status, {"X-Error-Code": "BadRequest"} if errors else {})

    def _api(self, match: re.Match, query: dict, body: bytes):
        repo_type, repo_id = match["type"][:-1], match["repo"]
        action, revision = match["action"] or "revision", unquote(match["rev"] or "main")
        hub = self.server.hub
        if action == "commit":
            commit = hub.apply_commit(repo_type, repo_id, revision, body)
            commit_url = f"{self.server.repo_url(repo_type, repo_id)}/commit/{commit.sha}"
            return self._send_json({"success": True, "commitOid": commit.sha, "commitUrl": commit_url})
        commit = hub.commit_at(repo_type, repo_id, revision)
        if action == "preupload":
            requested = json.loads(body)["files"]
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": git_blob_sha(commit.files[f["path"]]) if f["path"] in commit.files else None}
                for f in requested
            ]
            return self._send_json({"files": files, "commitOid": commit.sha})
        if action == "tree":
            under = unquote(match["path"] or "").strip("/")
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            return self._send_json(_tree(commit.files, under, recursive))
        siblings = [{"rfilename": path} for path in sorted(commit.files)]
        self._send_json(
            {"id": repo_id, "_id": repo_id, "sha": commit.sha, "private": False, "siblings": siblings, "tags": []}
        )

    def _resolve(self, match: re.Match, send_body: bool):
        repo_type = "dataset" if match["type"] else "model"
        commit = self.server.hub.commit_at(repo_type, match["repo"], unquote(match["rev"]))
        path = unquote(match["path"])
        if path not in commit.files:
            raise HubError(HTTPStatus.NOT_FOUND, "EntryNotFound", f"{path} does not exist at {commit.sha}")
        content = commit.files[path]
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{git_blob_sha(content)}"'}
        self._send(content, "application/octet-stream", HTTPStatus.OK, headers, send_body)

    def _send_json(self, payload, status=HTTPStatus.OK, headers=None, send_body=True):
        self._send(json.dumps(payload).encode(), "application/json", status, headers or {}, send_body)

    def _send(self, content: bytes, content_type: str, status: HTTPStatus, headers: dict, send_body: bool):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(content)


def _tree(files: dict[str, bytes], under: str, recursive: bool) -> list[dict]:
    """Hub tree entries for the files below `under` (folders listed as `directory` entries)."""
    prefix = f"{under}/" if under else ""
    entries: dict[str, dict] = {}
    for path in sorted(p for p in files if p.startswith(prefix)):
        parts = path[len(prefix):].split("/")
        for depth in range(1, len(parts)):
            folder = prefix + "/".join(parts[:depth])
            entries.setdefault(folder, {"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()})
            if not recursive:
                break
        if recursive or len(parts) == 1:
            entries[path] = {"type": "file", "path": path, "size": len(files[path]), "oid": git_blob_sha(files[path])}
    return list(entries.values())


class LocalHubServer(ThreadingHTTPServer):
    """`with LocalHubServer() as server:` serves on `server.url` in a daemon thread until the block ends."""

    daemon_threads = True

    def __init__(self, lifetime_s: float = 300.0, max_body_bytes: int = 256 * 1024 * 1024):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = LocalHub()
        self.max_body_bytes = max_body_bytes
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, name="local-hub", daemon=True)
        self._deadline = threading.Timer(lifetime_s, self.shutdown)
        self._deadline.daemon = True

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{repo_id}" if repo_type == "model" else f"{self.url}/{repo_type}s/{repo_id}"

    def __enter__(self) -> "LocalHubServer":
        self._thread.start()
        self._deadline.start()
        return self

    def __exit__(self, *exc_info):
        self._deadline.cancel()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
