from msa_kit.app import run_service

from .app import GatewaySettings, build_app

run_service("gateway", GatewaySettings, build_app)
