from msa_kit.app import run_service

from .bootstrap import ProbeSettings, build_app

run_service("probe", ProbeSettings, build_app)
