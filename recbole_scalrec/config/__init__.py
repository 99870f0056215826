from recbole_scalrec.config.configurator import Config, parse_cli_overrides

__all__ = ["Config", "parse_cli_overrides"]
