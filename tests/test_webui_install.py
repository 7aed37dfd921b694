"""install.py: installs only what is missing, keeps image-reward's pins out of the WebUI's environment."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def install(monkeypatch):
    spec = importlib.util.spec_from_file_location("dato_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv("DATO_SKIP_IMAGEREWARD", raising=False)
    return module


class FakeLaunch:
    """The WebUI's ``launch`` module as install.py uses it."""

    def __init__(self, fail=False):
        self.calls = []
        self.fail = fail

    def run_pip(self, command, desc=None):
        self.calls.append(command)
        if self.fail:
            raise RuntimeError("no network")


def available(monkeypatch, install, present):
    monkeypatch.setattr(install, "importable", lambda module, extra=None: module in present)


def test_nothing_missing_means_nothing_run(install, monkeypatch):
    available(monkeypatch, install, {"pymoo", "ImageReward", "fairscale", "timm"})
    monkeypatch.setattr(install, "pip_check", lambda: pytest.fail("pip check must not run"))
    launch = FakeLaunch()
    assert install.main(launch) == 0 and launch.calls == []


def test_pymoo_is_installed_normally(install, monkeypatch):
    available(monkeypatch, install, {"ImageReward", "fairscale", "timm"})
    monkeypatch.setattr(install, "pip_check", lambda: set())
    launch = FakeLaunch()
    install.main(launch)
    assert launch.calls == ['install "pymoo>=0.6.1"']


def test_image_reward_goes_into_deps_without_its_dependencies(install, monkeypatch):
    available(monkeypatch, install, {"pymoo", "timm"})
    monkeypatch.setattr(install, "pip_check", lambda: set())
    launch = FakeLaunch()
    install.main(launch)
    (command,) = launch.calls
    assert command.startswith(f'install --no-deps --upgrade --target "{install.DEPS}"')
    assert '"image-reward==1.5"' in command and '"fairscale==0.4.13"' in command and "timm" not in command
    assert install.DEPS == ROOT / "deps"


def test_image_reward_can_be_skipped(install, monkeypatch):
    available(monkeypatch, install, {"pymoo"})
    monkeypatch.setenv("DATO_SKIP_IMAGEREWARD", "1")
    assert install.plan() == []


def test_new_pip_check_problems_are_reported(install, monkeypatch, capsys):
    available(monkeypatch, install, {"ImageReward", "fairscale", "timm"})
    answers = iter([{"old problem"}, {"old problem", "x 1.0 has requirement y==2, but you have y 3."}])
    monkeypatch.setattr(install, "pip_check", lambda: next(answers))
    install.main(FakeLaunch())
    out = capsys.readouterr().out
    assert "pip check reports new problems" in out and "x 1.0 has requirement" in out and "old problem" not in out


def test_a_failed_install_never_stops_the_webui(install, monkeypatch, capsys):
    available(monkeypatch, install, set())
    monkeypatch.setattr(install, "pip_check", lambda: set())
    assert install.main(FakeLaunch(fail=True)) == 0
    assert "could not install" in capsys.readouterr().out


def test_importable_looks_into_deps_without_keeping_it_on_the_path(install, tmp_path):
    import sys

    (tmp_path / "dato_probe_pkg").mkdir()
    (tmp_path / "dato_probe_pkg" / "__init__.py").write_text("")
    assert install.importable("dato_probe_pkg", tmp_path)
    assert str(tmp_path) not in sys.path
    assert not install.importable("dato_probe_pkg_missing", tmp_path)
