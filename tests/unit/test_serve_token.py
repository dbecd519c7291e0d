"""`overcommit serve`'s admin token: from --token, --token-file or OVERCOMMIT_TOKEN, and
never an empty or blank one read as "no token" (which would serve without one)."""

from __future__ import annotations

import argparse

import pytest

from services.sim.cli import _serve_token


def args(token=None, token_file=None) -> argparse.Namespace:
    return argparse.Namespace(token=token, token_file=token_file)


def test_the_token_comes_from_the_option_the_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("OVERCOMMIT_TOKEN", raising=False)
    assert _serve_token(args()) is None
    monkeypatch.setenv("OVERCOMMIT_TOKEN", "from-env")
    assert _serve_token(args()) == "from-env"
    f = tmp_path / "token"
    f.write_text("from-file\nsecond line ignored\n")
    assert _serve_token(args(token_file=str(f))) == "from-file"
    assert _serve_token(args(token="from-option")) == "from-option"
    with pytest.raises(ValueError, match="not both"):
        _serve_token(args(token="a", token_file=str(f)))


@pytest.mark.parametrize("bad", ["", " ", "\t", " padded", "padded "])
def test_a_blank_token_is_refused_wherever_it_comes_from(tmp_path, monkeypatch, bad):
    f = tmp_path / "token"
    f.write_text(bad + "\n")
    monkeypatch.setenv("OVERCOMMIT_TOKEN", bad)
    for given, where in ((args(token=bad), "--token"), (args(token_file=str(f)), "--token-file")):
        with pytest.raises(ValueError, match=f"{where}.*must not be empty or blank"):
            _serve_token(given)
    with pytest.raises(ValueError, match="OVERCOMMIT_TOKEN: the token must not be empty"):
        _serve_token(args())


def test_an_unreadable_or_huge_token_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        _serve_token(args(token_file=str(tmp_path / "missing")))
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5000)
    with pytest.raises(ValueError, match="over 4096 bytes"):
        _serve_token(args(token_file=str(big)))
