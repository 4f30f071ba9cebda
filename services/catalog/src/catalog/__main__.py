from msa_kit.app import run_service

from .bootstrap import CatalogSettings, build_app

run_service("catalog", CatalogSettings, build_app)
