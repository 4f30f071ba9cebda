"""A Spring Cloud Config Server look-alike: serves a directory (or git repository) of YAML/properties files
over the Config Server HTTP API, decrypts ``{cipher}`` values, and announces changes on a RabbitMQ bus."""

from msa_config_server.api import create_app

__all__ = ["create_app"]
