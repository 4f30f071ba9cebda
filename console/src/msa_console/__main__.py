from msa_kit.app import run_service

from .bootstrap import ConsoleSettings, build_app

run_service("console", ConsoleSettings, build_app)
