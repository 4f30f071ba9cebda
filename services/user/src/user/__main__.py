from msa_kit.app import run_service

from .bootstrap import UserSettings, build_app

run_service("user", UserSettings, build_app)
