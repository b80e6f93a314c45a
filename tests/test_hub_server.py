"""The LocalHub fake (tests/support/hub_server.py) works with the REAL huggingface_hub / diffusers clients.

In-process calls pass ``endpoint=hub.endpoint``; downloads that must see ``HF_ENDPOINT`` / ``HF_HOME`` /
``HF_HUB_OFFLINE`` (read by huggingface_hub at import time) run in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from support import hub_server
from support.hub_server import LocalHub

TOKEN = "hf_localhubTestToken0123456789"
REPO = "test-user/tiny-model"
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(autouse=True)
def _no_xet(monkeypatch):
    # The fake speaks the Git-LFS upload path only; huggingface_hub picks it when Xet is disabled.
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)


@pytest.fixture
def hub():
    with LocalHub() as h:
        yield h


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.endpoint, token=TOKEN)


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    (d / "unet").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"sample_size": 8}))
    (d / WEIGHTS).write_bytes(os.urandom(2 * 1024 * 1024))
    return d


def _subprocess_env(hub: LocalHub, hf_home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    env.update(extra)
    return env


def _run_py(code: str, env: dict, timeout: int = 60) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- create_repo
def test_create_repo_exist_ok_409_and_private(hub, api):
    url = api.create_repo(REPO)
    assert url.repo_id == REPO and url.endpoint == hub.endpoint
    assert hub.repo_exists(REPO) and not hub.is_private(REPO)
    first_sha = hub.head(REPO)
    assert len(first_sha) == 40 and int(first_sha, 16) >= 0

    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO)
    assert err.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO  # 409 swallowed by exist_ok
    assert hub.head(REPO) == first_sha  # re-creating did not reset the repo

    api.create_repo("test-user/secret", private=True)
    assert hub.is_private("test-user/secret")
    with pytest.raises(RepositoryNotFoundError):  # private repos are invisible without a token
        HfApi(endpoint=hub.endpoint, token=False).model_info("test-user/secret")
    assert api.model_info("test-user/secret").private is True

    creates = hub.find_requests("POST", "/api/repos/create")
    assert [r.status for r in creates] == [200, 409, 409, 200]
    assert all(r.authorization == f"Bearer {TOKEN}" for r in creates)


# --------------------------------------------------------------------------------------------- uploads
def test_upload_folder_sends_small_json_inline_and_binary_through_lfs(hub, api, model_dir):
    api.create_repo(REPO)
    hub.clear_requests()
    info = api.upload_folder(repo_id=REPO, folder_path=model_dir, commit_message="add model")

    weights = (model_dir / WEIGHTS).read_bytes()
    oid = hashlib.sha256(weights).hexdigest()
    assert info.oid == hub.head(REPO)
    assert hub.files(REPO) == {
        ".gitattributes": hub.files(REPO)[".gitattributes"],
        "config.json": (model_dir / "config.json").read_bytes(),
        WEIGHTS: weights,
    }
    assert hub.tree(REPO)[WEIGHTS]["lfs"] is True and hub.tree(REPO)["config.json"]["lfs"] is False

    calls = [(r.method, r.path) for r in hub.requests]
    assert calls[0] == ("POST", f"/api/models/{REPO}/preupload/main")
    assert ("POST", f"/{REPO}.git/info/lfs/objects/batch") in calls
    puts = hub.find_requests("PUT", "/__lfs__/upload/")
    assert len(puts) == 1 and puts[0].body_size == len(weights) and puts[0].status == 200
    assert puts[0].authorization is None  # like a pre-signed URL: the token is not sent to the storage
    assert hub.lfs_uploads == [oid]
    verify = hub.find_requests("POST", "/info/lfs/objects/verify")
    assert len(verify) == 1 and verify[0].json() == {"oid": oid, "size": len(weights)}
    assert calls[-1] == ("POST", f"/api/models/{REPO}/commit/main")

    commit_lines = [json.loads(line) for line in hub.requests[-1].body.decode().splitlines()]
    assert commit_lines[0] == {"key": "header", "value": {"summary": "add model", "description": ""}}
    by_key = {line["value"]["path"]: line["key"] for line in commit_lines[1:]}
    assert by_key == {"config.json": "file", WEIGHTS: "lfsFile"}
    assert hub.commits(REPO)[0]["lfs"] == [WEIGHTS] and hub.commits(REPO)[0]["added"] == ["config.json"]

    for r in hub.requests:  # every Hub API call carried the token
        if not r.path.startswith("/__lfs__/"):
            assert r.authorization == f"Bearer {TOKEN}", (r.method, r.path)


def test_reupload_of_unchanged_folder_makes_no_commit_and_no_lfs_put(hub, api, model_dir):
    api.create_repo(REPO)
    api.upload_folder(repo_id=REPO, folder_path=model_dir, commit_message="v1")
    head, n_commits = hub.head(REPO), len(hub.commits(REPO))
    hub.clear_requests()

    (model_dir / "config.json").write_text(json.dumps({"sample_size": 16}))
    api.upload_folder(repo_id=REPO, folder_path=model_dir, commit_message="v2")
    assert hub.find_requests("PUT") == []  # LFS object already on the Hub: batch answers without actions
    assert len(hub.commits(REPO)) == n_commits + 1 and hub.head(REPO) != head
    assert hub.commits(REPO)[0]["added"] == ["config.json"] and hub.commits(REPO)[0]["lfs"] == []

    head = hub.head(REPO)
    api.upload_folder(repo_id=REPO, folder_path=model_dir, commit_message="v3 (no change)")
    assert hub.head(REPO) == head  # the client skipped the empty commit thanks to the preupload oids


def test_repo_info_lists_siblings_with_lfs_metadata(hub, api, model_dir):
    api.create_repo(REPO)
    commit = api.upload_folder(repo_id=REPO, folder_path=model_dir, commit_message="add")
    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == commit.oid == hub.head(REPO)
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {".gitattributes", "config.json", WEIGHTS}
    weights = (model_dir / WEIGHTS).read_bytes()
    assert siblings[WEIGHTS].size == len(weights)
    assert siblings[WEIGHTS].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert siblings["config.json"].lfs is None
    assert api.repo_info(REPO, revision=commit.oid).sha == commit.oid
    assert sorted(api.list_repo_files(REPO)) == sorted(siblings)


# --------------------------------------------------------------------------------------------- downloads
def test_download_in_subprocess_then_offline_from_cache(hub, api, model_dir, tmp_path):
    api.create_repo(REPO)
    commit = api.upload_folder(repo_id=REPO, folder_path=model_dir, commit_message="add")
    hub.clear_requests()
    hf_home = tmp_path / "hf_home"
    code = f"""
        import json, os
        from huggingface_hub import hf_hub_download, snapshot_download
        cfg = hf_hub_download({REPO!r}, "config.json")
        w = hf_hub_download({REPO!r}, {WEIGHTS!r})
        snap = snapshot_download({REPO!r})
        files = sorted(os.path.relpath(os.path.join(d, f), snap) for d, _, fs in os.walk(snap) for f in fs)
        print(json.dumps({{"cfg": cfg, "w": w, "snap": snap, "files": files}}))
    """
    online = _run_py(code, _subprocess_env(hub, hf_home, HF_TOKEN=TOKEN))

    cache = hf_home / "hub" / "models--test-user--tiny-model"
    assert online["snap"] == str(cache / "snapshots" / commit.oid)
    assert online["files"] == sorted([".gitattributes", "config.json", WEIGHTS])
    assert Path(online["w"]).read_bytes() == (model_dir / WEIGHTS).read_bytes()
    assert Path(online["cfg"]).read_bytes() == (model_dir / "config.json").read_bytes()
    assert (cache / "refs" / "main").read_text() == commit.oid
    sha256 = hashlib.sha256((model_dir / WEIGHTS).read_bytes()).hexdigest()
    assert (cache / "blobs" / sha256).is_file()  # LFS blob stored under its X-Linked-Etag
    resolves = hub.find_requests(contains="/resolve/")
    assert {r.method for r in resolves} == {"HEAD", "GET"}
    assert all(r.authorization == f"Bearer {TOKEN}" for r in resolves)  # HF_TOKEN was sent

    hub.clear_requests()
    offline = _run_py(code, _subprocess_env(hub, hf_home, HF_HUB_OFFLINE="1"))
    assert offline == online
    assert hub.requests == []  # served from the cache only


def test_diffusers_from_pretrained_repo_id_online_then_from_cache(hub, tmp_path):
    """diffusers' DiffusionPipeline.from_pretrained(repo_id) against the fake, in one subprocess
    (importing torch+diffusers costs seconds): upload, load online, then load again with all HTTP blocked."""
    code = f"""
        import json, sys, torch
        import huggingface_hub.constants as hc
        from huggingface_hub import HfApi
        from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                           block_out_channels=(4, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained({str(tmp_path / "pipe")!r})
        api = HfApi(token={TOKEN!r})
        api.create_repo("test-user/ddpm")
        sha = api.upload_folder(repo_id="test-user/ddpm", folder_path={str(tmp_path / "pipe")!r}, commit_message="pipe").oid

        def same(p):
            sd = p.unet.state_dict()
            return all(torch.equal(sd[k], v) for k, v in unet.state_dict().items())

        online = DDPMPipeline.from_pretrained("test-user/ddpm")
        hc.HF_HUB_OFFLINE = True  # what HF_HUB_OFFLINE=1 sets: every HTTP request now raises before being sent
        cached = DDPMPipeline.from_pretrained("test-user/ddpm")
        print(json.dumps({{"sha": sha, "online": same(online), "cached": same(cached),
                          "T": cached.scheduler.config.num_train_timesteps}}))
    """
    out = _run_py(code, _subprocess_env(hub, tmp_path / "hf_home"), timeout=120)
    assert out == {"sha": hub.head("test-user/ddpm"), "online": True, "cached": True, "T": 10}
    assert hub.find_requests("GET", "/resolve/") and hub.find_requests("PUT", "/__lfs__/upload/")
    assert hub.tree("test-user/ddpm")[WEIGHTS]["lfs"] is True


# --------------------------------------------------------------------------------------------- PRs, branches
def test_create_pr_commit_goes_to_refs_pr_and_leaves_main_alone(hub, api, tmp_path):
    api.create_repo(REPO)
    main_before = hub.head(REPO)
    pr = api.upload_file(
        path_or_fileobj=b'{"x": 1}', path_in_repo="extra.json", repo_id=REPO, commit_message="propose", create_pr=True
    )
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert pr.pr_url == f"{hub.endpoint}/{REPO}/discussions/1"
    assert hub.head(REPO) == main_before and "extra.json" not in hub.files(REPO)
    assert hub.files(REPO, "refs/pr/1")["extra.json"] == b'{"x": 1}'
    assert hub.head(REPO, "refs/pr/1") == pr.oid != main_before
    assert hub.find_requests("POST", "/commit/main")[-1].query == {"create_pr": ["1"]}

    # the PR revision is downloadable (URL-quoted "refs%2Fpr%2F1" on the wire)
    path = hf_hub_download(REPO, "extra.json", revision="refs/pr/1", endpoint=hub.endpoint, cache_dir=tmp_path)
    assert Path(path).read_bytes() == b'{"x": 1}'
    assert any("refs%2Fpr%2F1" in r.raw_path for r in hub.find_requests("HEAD", "/resolve/"))

    pr2 = api.upload_file(path_or_fileobj=b"2", path_in_repo="two.txt", repo_id=REPO, commit_message="p2", create_pr=True)
    assert pr2.pr_revision == "refs/pr/2" and "extra.json" not in hub.files(REPO, "refs/pr/2")


def test_commit_to_existing_branch_keeps_history_with_new_shas(hub, api):
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id=REPO, commit_message="add a")
    api.create_branch(REPO, branch="dev")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch(REPO, branch="dev")
    assert err.value.response.status_code == 409

    info = api.create_commit(
        REPO,
        operations=[CommitOperationAdd("b.txt", b"b"), CommitOperationDelete("a.txt")],
        commit_message="on dev",
        revision="dev",
    )
    assert sorted(hub.files(REPO, "dev")) == [".gitattributes", "b.txt"]
    assert sorted(hub.files(REPO)) == [".gitattributes", "a.txt"]
    dev_history = [c["id"] for c in hub.commits(REPO, "dev")]
    assert dev_history[0] == info.oid and dev_history[1:] == [c["id"] for c in hub.commits(REPO)]
    assert len(set(dev_history)) == len(dev_history) == 3
    assert [c.commit_id for c in api.list_repo_commits(REPO, revision="dev")] == dev_history
    assert hub.commits(REPO, "dev")[0]["deleted"] == ["a.txt"]


# --------------------------------------------------------------------------------------------- auth
def test_writes_without_token_are_rejected_with_401(hub, api):
    api.create_repo(REPO)
    head = hub.head(REPO)
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(HfHubHTTPError) as err:
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, commit_message="nope")
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        anonymous.create_repo("test-user/other")
    assert err.value.response.status_code == 401
    assert hub.head(REPO) == head and not hub.repo_exists("test-user/other")
    rejected = [r for r in hub.requests if r.status == 401]
    assert rejected and all(r.authorization is None for r in rejected)
    assert anonymous.model_info(REPO).sha == head  # reads of a public repo need no token


def test_only_listed_tokens_are_accepted():
    with LocalHub(tokens=[TOKEN]) as hub:
        with pytest.raises(HfHubHTTPError) as err:
            HfApi(endpoint=hub.endpoint, token="hf_wrong").create_repo(REPO)
        assert err.value.response.status_code == 401
        HfApi(endpoint=hub.endpoint, token=TOKEN).create_repo(REPO)
        assert hub.repo_exists(REPO)


# --------------------------------------------------------------------------------------------- standalone
def test_standalone_process_prints_endpoint_and_persists_state(tmp_path):
    script = hub_server.__file__
    proc = subprocess.Popen(
        [sys.executable, script, "--port", "0", "--root", str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        endpoint = proc.stdout.readline().strip()
        assert endpoint.startswith("http://127.0.0.1:")
        HfApi(endpoint=endpoint, token=TOKEN).create_repo(REPO)
        with urllib.request.urlopen(f"{endpoint}/api/models/{REPO}") as resp:
            assert json.load(resp)["id"] == REPO
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    state = (tmp_path / "state.json").read_text()
    assert REPO in state and TOKEN not in state  # tokens are never written to disk
    with LocalHub(tmp_path) as again:  # state reloads from root
        assert again.repo_exists(REPO)
