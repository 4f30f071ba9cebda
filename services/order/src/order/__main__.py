from msa_kit.app import run_service

from .bootstrap import OrderSettings, build_app

run_service("order", OrderSettings, build_app)
