"""Sequential models of the plug-in (looked up before RecBole's)."""
