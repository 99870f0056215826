"""The semantic channel: the device abstract ``a(t)``, the cloud language model and the on-disk
cache of its outputs ``h(t)`` (METHOD.md Sec. 1)."""
