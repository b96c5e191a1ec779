"""A small Hugging Face Hub-compatible HTTP server, so that tests can do real Hub round trips offline.

`hub(tmp_dir)` starts `HubServer` on 127.0.0.1 (free port, background thread), points `huggingface_hub`,
`transformers` and `datasets` at it, turns offline mode off while it runs, and restores every setting afterwards.
The clients are not mocked: `push_to_hub`, `from_pretrained`, `load_dataset`, `HfApi` ... make real HTTP requests,
answered the way huggingface.co answers them (URLs, JSON payloads, `ETag` / `X-Repo-Commit` / `X-Linked-*` headers,
404s tagged with `X-Error-Code`).

Scope, on purpose small: model and dataset repos; a `main` branch plus every commit sha (immutable snapshots);
regular files (base64 in the commit) and LFS files (basic transfer, no Xet, no multipart); no pull requests, no
access control (any token is accepted and the caller is always the user `user`); no `expand` details (last
commit, security scan) in listings; no dataset viewer (`datasets` is told not to ask it).
"""

import base64
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

USER = "user"
REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"  # "namespace/name" (or a bare "name", only ever reported as missing)
API = rf"^/api/(?P<kind>models|datasets)/{REPO}"
PREFIX = r"^/(?:(?P<kind>datasets)/)?"  # web URLs prefix dataset repos with "datasets/" and model repos with nothing
# Stored as LFS like the default .gitattributes of a new Hub repo does; other binary or large files are LFS too.
LFS_SUFFIXES = (".safetensors", ".parquet", ".arrow", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".npy", ".zip")
LFS_MIN_SIZE = 10 * 1024 * 1024
LFS_JSON, OCTET_STREAM = "application/vnd.git-lfs+json", "application/octet-stream"


@dataclass(frozen=True)
class Entry:
    """One file of a commit: content-addressed by `sha256` in the blob store, flagged LFS or regular."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str  # the git blob sha1 (of the LFS pointer file for LFS files), as the Hub's tree and ETag report it

    @property
    def etag(self) -> str:
        """What the Hub reports as the file's ETag (and preupload oid): the sha256 for LFS, the git oid otherwise."""
        return self.sha256 if self.lfs else self.git_oid

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))


@dataclass
class Repo:
    """A repository: its commits as `{sha: {path: Entry}}` snapshots and the sha `main` points to."""

    kind: str  # "model" or "dataset"
    repo_id: str
    commits: dict[str, dict[str, Entry]] = field(default_factory=dict)
    head: str = ""

    def url_path(self) -> str:
        return ("datasets/" if self.kind == "dataset" else "") + self.repo_id


class HubError(Exception):
    """An error answered as the Hub does: status, `X-Error-Code` header, JSON `{"error": message}` body."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def snapshot_sha(files: dict[str, Entry]) -> str:
    """One commit sha per repo state: the sha1 of the sorted file listing."""
    return hashlib.sha1(json.dumps(sorted((path, e.git_oid) for path, e in files.items())).encode()).hexdigest()


class HubServer(ThreadingHTTPServer):
    """The Hub's state (repos in memory, blobs under `root/blobs`) served on 127.0.0.1 at a free port."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[str] = []  # "METHOD /path STATUS" of every request, to debug or assert what clients call
        self.lock = threading.Lock()

    def repo(self, kind: str | None, repo_id: str) -> Repo:
        repo = self.repos.get((_kind(kind), unquote(repo_id)))
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def files(self, repo: Repo, revision: str) -> tuple[str, dict[str, Entry]]:
        """The commit sha and files a revision (`main` or a commit sha, possibly URL-quoted) points to."""
        sha = repo.head if unquote(revision) in ("main", "refs/heads/main") else unquote(revision)
        if sha not in repo.commits:
            raise HubError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
        return sha, repo.commits[sha]

    def write_blob(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        (self.blobs / sha256).write_bytes(data)
        return sha256

    def commit(self, repo: Repo, lines: list[dict[str, Any]]) -> str:
        """Apply the NDJSON operations of a `/commit` call to `main` and return the new head sha."""
        files = dict(repo.commits[repo.head])
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                if value.get("parentCommit") not in (None, repo.head):
                    raise HubError(412, "Parent commit is not the head of the branch")
            elif key == "file":
                data = base64.b64decode(value["content"])
                files[value["path"]] = Entry(self.write_blob(data), len(data), False, git_oid(data))
            elif key == "lfsFile":
                if not (self.blobs / value["oid"]).is_file():
                    raise HubError(400, f"LFS object {value['oid']} was never uploaded")
                size = (self.blobs / value["oid"]).stat().st_size
                files[value["path"]] = Entry(value["oid"], size, True, git_oid(lfs_pointer(value["oid"], size)))
            elif key in ("deletedFile", "deletedFolder"):
                folder = value["path"].rstrip("/") + "/"
                gone = [p for p in files if p == value["path"] or (key == "deletedFolder" and p.startswith(folder))]
                if not gone:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                for path in gone:
                    del files[path]
            else:
                raise HubError(400, f"Unsupported commit operation {key!r}")
        repo.head = snapshot_sha(files)
        repo.commits[repo.head] = files
        return repo.head


def _kind(kind: str | None) -> str:
    return "dataset" if kind in ("dataset", "datasets") else "model"


def _tree_entries(files: dict[str, Entry], prefix: str, recursive: bool) -> list[dict[str, Any]]:
    """Tree listing entries (`/tree` format): files and folders right below `prefix`, or all of them if recursive."""
    base = prefix + "/" if prefix else ""
    entries: dict[str, dict[str, Any]] = {}
    for path, entry in sorted(files.items()):
        if not path.startswith(base):
            continue
        parts = path[len(base) :].split("/")
        for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
            folder = base + "/".join(parts[:depth])
            entries.setdefault(folder, _folder_info(folder))
        if recursive or len(parts) == 1:
            entries[path] = _file_info(path, entry)
    return list(entries.values())


def _file_info(path: str, entry: Entry) -> dict[str, Any]:
    info: dict[str, Any] = {"type": "file", "path": path, "size": entry.size, "oid": entry.git_oid}
    if entry.lfs:
        info["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
    return info


def _folder_info(path: str) -> dict[str, Any]:
    return {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(path.encode()).hexdigest()}


class HubHandler(BaseHTTPRequestHandler):
    """Routes each request to an `on_*` method of this class by regular expression on the (still quoted) URL path."""

    server: HubServer
    ROUTES: list[tuple[str, str, str]] = [  # (methods, URL path pattern, handler): what the clients call
        ("GET", r"^/api/whoami-v2$", "whoami"),  # HfApi.whoami, e.g. to find the namespace of a bare repo name
        ("POST", r"^/api/repos/create$", "create_repo"),  # HfApi.create_repo, first step of every push_to_hub
        ("POST", r"^/api/validate-yaml$", "validate_yaml"),  # create_commit checks a README's metadata first
        ("GET", API + r"(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),  # model_info/dataset_info/repo_exists
        ("GET", API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree"),  # list_repo_tree, HfFileSystem.ls
        ("POST", API + r"/paths-info/(?P<rev>[^/]+)$", "paths_info"),  # get_paths_info, HfFileSystem.info
        ("POST", API + r"/preupload/(?P<rev>[^/]+)$", "preupload"),  # create_commit: regular or LFS, per file
        ("POST", API + r"/commit/(?P<rev>[^/]+)$", "commit"),  # create_commit: the NDJSON list of operations
        ("POST", PREFIX + REPO + r"\.git/info/lfs/objects/batch$", "lfs_batch"),  # where to PUT each LFS file
        ("PUT", r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$", "lfs_upload"),  # the upload URL lfs_batch hands out
        ("GET HEAD", PREFIX + REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),  # hf_hub_download
    ]

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet: `HubServer.requests` records what was asked."""

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_GET

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self.body = self._read_body()  # read up front, so that an error answer never leaves a body half-sent
        try:
            for methods, pattern, name in self.ROUTES:
                match = re.match(pattern, url.path)
                if self.command in methods.split() and match:
                    getattr(self, "on_" + name)(**{k: v for k, v in match.groupdict().items() if v is not None})
                    return
            raise HubError(404, f"The test Hub does not implement {self.command} {url.path}")
        except HubError as error:
            headers = {"X-Error-Message": error.message, "X-Error-Code": error.code, "X-Repo-Commit": error.commit}
            self._send_json({"error": error.message}, error.status, {k: v for k, v in headers.items() if v})
        except Exception as error:  # a bug of this server: make it visible to the client, as a 500
            self._send_json({"error": f"test Hub failure: {error!r}"}, 500)

    def _read_body(self) -> bytes:
        """The request body, sent with a Content-Length or chunked (httpx streams file objects chunked)."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailers, up to the blank line
            pass
        return b"".join(chunks)

    def _json(self) -> Any:
        return json.loads(self.body or b"{}")

    def _send(self, status: int, body: bytes, headers: dict[str, str], content_type: str) -> None:
        self.server.requests.append(f"{self.command} {urlsplit(self.path).path} {status}")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", headers.pop("Content-Length", str(len(body))))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), dict(headers or {}), "application/json")

    def on_whoami(self) -> None:
        auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}
        self._send_json({"type": "user", "id": USER, "name": USER, "fullname": "Test User", "orgs": [], "auth": auth})

    def on_create_repo(self) -> None:
        payload = self._json()
        repo = Repo(_kind(payload.get("type")), f"{payload.get('organization') or USER}/{payload['name']}")
        url = f"{self.server.url}/{repo.url_path()}"
        with self.server.lock:
            if (repo.kind, repo.repo_id) in self.server.repos:
                return self._send_json({"error": f"You already created this {repo.kind} repo", "url": url}, 409)
            repo.head = snapshot_sha({})
            repo.commits[repo.head] = {}
            self.server.repos[(repo.kind, repo.repo_id)] = repo
        self._send_json({"url": url, "name": repo.repo_id, "id": repo.repo_id})

    def on_validate_yaml(self) -> None:
        payload = self._json()
        errors = card_metadata_errors(payload.get("content", ""), payload.get("repoType") or "model")
        self._send_json({"errors": [{"message": e} for e in errors], "warnings": []}, 400 if errors else 200)

    def on_repo_info(self, kind: str, repo: str, rev: str = "main") -> None:
        found = self.server.repo(kind, repo)
        sha, files = self.server.files(found, rev)
        siblings = []
        for path, entry in sorted(files.items()):
            sibling = {"rfilename": path, "size": entry.size, "blobId": entry.git_oid}
            if entry.lfs:
                sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        info = {"id": found.repo_id, "author": found.repo_id.split("/")[0], "sha": sha, "private": False}
        info |= {"gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings}
        self._send_json(info | ({"modelId": found.repo_id} if found.kind == "model" else {}))

    def on_tree(self, kind: str, repo: str, rev: str, path: str = "") -> None:
        sha, files = self.server.files(self.server.repo(kind, repo), rev)
        prefix = unquote(path).strip("/")
        if prefix and not any(p.startswith(prefix + "/") for p in files):
            raise HubError(404, f"Entry not found: {prefix}", "EntryNotFound", sha)
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        self._send_json(_tree_entries(files, prefix, recursive))

    def on_paths_info(self, kind: str, repo: str, rev: str) -> None:
        _, files = self.server.files(self.server.repo(kind, repo), rev)
        infos = []
        for path in (p.strip("/") for p in parse_qs(self.body.decode()).get("paths", [])):
            if path in files:
                infos.append(_file_info(path, files[path]))
            elif any(p.startswith(path + "/") for p in files):
                infos.append(_folder_info(path))
        self._send_json(infos)

    def on_preupload(self, kind: str, repo: str, rev: str) -> None:
        _, files = self.server.files(self.server.repo(kind, repo), rev)
        answers = []
        for file in self._json()["files"]:
            sample = base64.b64decode(file["sample"])
            lfs = file["path"].endswith(LFS_SUFFIXES) or file["size"] >= LFS_MIN_SIZE or b"\0" in sample
            existing = files.get(file["path"])  # its oid lets the client skip a file that did not change
            answer = {"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            answers.append(answer | {"oid": None if existing is None else existing.etag})
        self._send_json({"files": answers})

    def on_commit(self, kind: str, repo: str, rev: str) -> None:
        found = self.server.repo(kind, repo)
        if self.query.get("create_pr") or unquote(rev) != "main":
            raise HubError(400, "The test Hub only commits to the main branch (no pull requests, no other branch)")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        with self.server.lock:
            sha = self.server.commit(found, lines)
        url = f"{self.server.url}/{found.url_path()}/commit/{sha}"
        self._send_json({"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None})

    def on_lfs_batch(self, repo: str, kind: str | None = None) -> None:
        self.server.repo(kind, repo)
        payload = self._json()
        if payload.get("operation") != "upload":
            raise HubError(400, "The test Hub only supports LFS uploads (downloads go through /resolve)")
        objects = []
        for obj in payload["objects"]:
            answer: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not (self.server.blobs / obj["oid"]).is_file():  # no "actions" tells the client it is already there
                answer["actions"] = {"upload": {"href": f"{self.server.url}/lfs-upload/{obj['oid']}"}}
            objects.append(answer)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(), {}, LFS_JSON)

    def on_lfs_upload(self, oid: str) -> None:
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match LFS oid {oid}")
        self.server.write_blob(self.body)
        self._send(200, b"", {}, "text/plain")

    def on_resolve(self, repo: str, rev: str, path: str, kind: str | None = None) -> None:
        sha, files = self.server.files(self.server.repo(kind, repo), rev)
        entry = files.get(unquote(path))
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", sha)
        headers = {"ETag": f'"{entry.etag}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers |= {"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)}
        if self.command == "HEAD":
            return self._send(200, b"", headers | {"Content-Length": str(entry.size)}, OCTET_STREAM)
        data = (self.server.blobs / entry.sha256).read_bytes()
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if not match:
            return self._send(200, data, headers, OCTET_STREAM)
        start, end = match.groups()
        first = int(start) if start else max(entry.size - int(end), 0)
        last = min(int(end), entry.size - 1) if start and end else entry.size - 1
        if first >= entry.size:
            raise HubError(416, f"Range not satisfiable for a {entry.size}-byte file")
        headers["Content-Range"] = f"bytes {first}-{last}/{entry.size}"
        self._send(206, data[first : last + 1], headers, OCTET_STREAM)


# The Hub's rules for a card's YAML front matter (huggingface.co/docs/hub/model-cards, "Model card metadata"), the
# ones our cards touch: the Hub refuses a README that breaks them, and so does this server.
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc0-1.0", "openrail", "other"}


def _repo_ids(value: Any, key: str) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [
        f'"{key}" must be Hub repo ids, got {item!r}'
        for item in values
        if not (isinstance(item, str) and REPO_ID.match(item) and ".." not in item and "--" not in item)
    ]


def card_metadata_errors(content: str, repo_type: str = "model") -> list[str]:
    """What the Hub would refuse in a README's metadata: unparsable YAML, repo ids that are not ids (a local path as
    `base_model` or in `datasets`), an unknown license, a `model-index` entry without a name or its required fields."""
    import yaml

    match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.S)
    if not match:
        return []  # no metadata: a warning on the Hub, not an error
    try:
        metadata = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as error:
        return [f"Invalid YAML: {error}"]
    if not isinstance(metadata, dict):
        return ["The metadata must be a mapping"]
    errors = []
    if "license" in metadata and metadata["license"] not in LICENSES:
        errors.append(f'"license" must be a Hub license id, got {metadata["license"]!r}')
    for key in ("base_model", "datasets"):
        if key in metadata:
            errors += _repo_ids(metadata[key], key)
    for entry in metadata.get("model-index") or []:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"]):
            errors.append('"model-index" entries need a "name"')
            continue
        for result in entry.get("results") or []:
            if not (result.get("task") or {}).get("type"):
                errors.append('"model-index" results need "task.type"')
            dataset = result.get("dataset") or {}
            if not (dataset.get("type") and dataset.get("name")):
                errors.append('"model-index" results need "dataset.type" and "dataset.name"')
            if not result.get("metrics") or any("type" not in m or "value" not in m for m in result["metrics"]):
                errors.append('"model-index" metrics need "type" and "value"')
    return errors


@contextmanager
def _patched(env: dict[str, str], attributes: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """Set environment variables and (existing) module attributes, and put every one back as it was on exit."""
    saved_env = {key: os.environ.get(key) for key in env}
    saved_attributes = [(obj, name, getattr(obj, name)) for obj, name, _ in attributes]
    os.environ.update(env)
    for obj, name, value in attributes:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved_attributes:
            setattr(obj, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def hub(tmp_dir: Path, token: str = "hf_test") -> Iterator[HubServer]:
    """Run a `HubServer` storing under `tmp_dir` and point the clients at it, online, while the block runs.

    The environment is set for code that reads it later (and subprocesses); the values the clients already read at
    import time (pytest imports them before any test, with offline mode on) are patched where they live. Caches go
    to a fresh `HF_HOME` under `tmp_dir`, so nothing is read from or written to the user's cache.
    """
    import datasets.config
    import huggingface_hub.constants
    import huggingface_hub.hf_api
    import transformers.utils.hub

    server, home = HubServer(Path(tmp_dir) / "hub"), Path(tmp_dir) / "hf_home"
    url = server.url
    env = {"HF_ENDPOINT": url, "HF_TOKEN": token, "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1"}
    env |= {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    env |= {"HF_HUB_DISABLE_TELEMETRY": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0"}
    hub_paths = {"HF_HOME": "", "HF_HUB_CACHE": "hub", "HF_ASSETS_CACHE": "assets", "HF_XET_CACHE": "xet"}
    hub_paths |= {"HF_TOKEN_PATH": "token", "HF_STORED_TOKENS_PATH": "stored_tokens"}
    hub_paths |= {"AGENT_HARNESSES_PATH": ".agent_harnesses.json"}
    hub_constants = {name: str(home / path) for name, path in hub_paths.items()} | {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,  # Xet storage is a separate service: upload through the LFS protocol instead
    }
    datasets_paths = {"HF_CACHE_HOME": "", "HF_DATASETS_CACHE": "datasets", "HF_MODULES_CACHE": "modules"}
    datasets_paths |= {"DOWNLOADED_DATASETS_PATH": "datasets/downloads"}
    datasets_paths |= {"EXTRACTED_DATASETS_PATH": "datasets/downloads/extracted"}
    datasets_config = {name: home / path for name, path in datasets_paths.items()} | {
        "HF_ENDPOINT": url,
        "HUB_DATASETS_URL": url + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "HF_UPDATE_DOWNLOAD_COUNTS": False,  # else load_dataset pings an S3 bucket
        "USE_PARQUET_EXPORT": False,  # else load_dataset asks the dataset viewer, a service this server is not
    }
    attributes = [(huggingface_hub.constants, name, value) for name, value in hub_constants.items()]
    attributes += [(datasets.config, name, value) for name, value in datasets_config.items()]
    attributes.append((huggingface_hub.hf_api.api, "endpoint", url))  # the HfApi behind module-level helpers
    attributes.append((transformers.utils.hub, "_hf_api", None))  # transformers' shared HfApi, made on first use
    # A short poll interval, so that shutdown() returns in a blink rather than the default half second
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="test-hub", daemon=True
    )
    thread.start()
    try:
        with _patched(env, attributes):
            yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
