"""`effzoo push`, offline: the dry run, the refusals, and what is handed to huggingface_hub."""

import argparse
import json
import shutil
from typing import ClassVar

import pytest
from huggingface_hub import HfApi

from effzoo.hub import files_to_upload, push_checkpoint, write_model_card
from effzoo.hub import push as push_module
from effzoo.hub.cli import add_push_parser, run_push
from effzoo.hub.push import IGNORE_PATTERNS


@pytest.fixture
def carded(checkpoint):
    write_model_card(checkpoint)
    return checkpoint


class RecordingApi:
    """Stands in for HfApi: records every call, sends nothing."""

    calls: ClassVar[list] = []

    def __init__(self, **kwargs):
        assert kwargs == {}, "the token must come from huggingface_hub's own login, never from effzoo"

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return argparse.Namespace(commit_url="https://huggingface.co/user/tiny/commit/abc")
        return record


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setattr(push_module, "HfApi", RecordingApi)
    monkeypatch.setattr(push_module, "get_token", lambda: "hf_from_login")
    monkeypatch.setattr(RecordingApi, "calls", [])
    return RecordingApi


def test_push_hands_the_folder_and_options_to_the_client(carded, api):
    report = push_checkpoint(carded, "user/tiny", private=True, revision="v1", commit_message="first")
    assert api.calls == [
        ("create_repo", ("user/tiny",), {"private": True, "exist_ok": True}),
        ("create_branch", ("user/tiny",), {"branch": "v1", "exist_ok": True}),
        ("upload_folder", (), {"repo_id": "user/tiny", "folder_path": str(carded), "revision": "v1",
                               "commit_message": "first", "ignore_patterns": list(IGNORE_PATTERNS)}),
    ]
    assert report.url.endswith("/commit/abc") and report.files == files_to_upload(carded)

    api.calls.clear()
    push_checkpoint(carded, "user/tiny")
    assert [name for name, _, _ in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][2]["private"] is None  # the account's default visibility
    assert api.calls[1][2]["revision"] is None
    assert api.calls[1][2]["commit_message"] == "Upload effzoo full checkpoint"


def test_dry_run_lists_exactly_what_upload_folder_sends_and_sends_nothing(carded, api, monkeypatch):
    for junk in ["checkpoint-10/model.safetensors", "_scratch.txt", ".git/HEAD", "notes/__pycache__/x.pyc"]:
        (carded / junk).parent.mkdir(parents=True, exist_ok=True)
        (carded / junk).write_text("x")
    (carded / "notes" / "eval.txt").write_text("kept")
    report = push_checkpoint(carded, "user/tiny", dry_run=True)
    assert report.dry_run and api.calls == []
    assert {"README.md", "config.json", "model.safetensors", "effzoo_remote.py", "tokenizer.json",
            "notes/eval.txt"} <= set(report.files)
    assert not any(name.startswith(("checkpoint-", "_", ".git")) or "__pycache__" in name for name in report.files)
    assert "would upload to user/tiny, " in str(report)

    # The real upload_folder, stopped before it goes online, selects the same files.
    class Selected(Exception):
        pass

    def select(self, *args, **kwargs):
        raise Selected(sorted(op.path_in_repo for op in prepare(self, *args, **kwargs)))

    prepare = HfApi._prepare_upload_folder_additions
    monkeypatch.setattr(HfApi, "_prepare_upload_folder_additions", select)
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, *args, **kwargs: None)  # asks the Hub
    with pytest.raises(Selected) as selected:
        HfApi(token=False).upload_folder(repo_id="user/tiny", folder_path=carded, ignore_patterns=list(IGNORE_PATTERNS))
    assert selected.value.args[0] == report.files


@pytest.mark.parametrize("damage, message", [
    (lambda folder: shutil.rmtree(folder), "is not a directory"),
    (lambda folder: (folder / "config.json").unlink(), "not a model checkpoint"),
    (lambda folder: (folder / "config.json").write_text(json.dumps({"model_type": "bert"})), "not an effzoo one"),
    (lambda folder: (folder / "model.safetensors").unlink(), "No weights in"),
    (lambda folder: (folder / "README.md").unlink(), "no model card"),
])
def test_push_refuses_an_incomplete_folder(carded, api, damage, message):
    damage(carded)
    with pytest.raises(ValueError, match=message):
        push_checkpoint(carded, "user/tiny", dry_run=True)
    assert api.calls == []


def test_push_refuses_missing_shards_a_bad_repo_id_and_no_login(carded, api, monkeypatch):
    with pytest.raises(ValueError, match="Repo id"):
        push_checkpoint(carded, "not a repo id", dry_run=True)
    monkeypatch.setattr(push_module, "get_token", lambda: None)
    with pytest.raises(ValueError, match="hf auth login"):
        push_checkpoint(carded, "user/tiny")
    (carded / "model.safetensors").rename(carded / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (carded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError, match="model-00002-of-00002"):
        push_checkpoint(carded, "user/tiny", dry_run=True)
    assert api.calls == []


def test_push_command(carded, api, capsys):
    commands = argparse.ArgumentParser().add_subparsers(dest="command")
    add_push_parser(commands)
    parser = commands.choices["push"]
    run_push(parser.parse_args([str(carded), "user/tiny", "--dry-run"]))
    assert "model.safetensors" in capsys.readouterr().out and api.calls == []
    run_push(parser.parse_args([str(carded), "user/tiny", "--private", "--revision", "dev"]))
    assert [call[2].get("private") for call in api.calls] == [True, None, None]
    assert api.calls[2][2]["revision"] == "dev"
